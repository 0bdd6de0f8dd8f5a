//go:build !unix

package cputime

import "time"

// Supported says whether Process measures anything on this platform.
const Supported = false

func process() time.Duration { return 0 }
