//go:build !linux

package main

import "os"

// datasync flushes f's data as the embedded queue flushes its log.
func datasync(f *os.File) error { return f.Sync() }
