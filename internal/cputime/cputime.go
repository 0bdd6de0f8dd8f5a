// Package cputime reads the CPU time the running process has used, for
// benchmarks that report cost per operation in CPU rather than wall time
// (with an fsync or a loopback peer in the path, wall time mostly measures
// the disk or the scheduler).
package cputime

import "time"

// Process returns the user and system CPU time the process has used so
// far, or 0 where the platform does not say (Supported reports which).
func Process() time.Duration { return process() }
