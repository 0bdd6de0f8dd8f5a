package main

import (
	"os"

	"golang.org/x/sys/unix"
)

// datasync flushes f's data as the embedded queue flushes its log.
func datasync(f *os.File) error { return unix.Fdatasync(int(f.Fd())) }
