//go:build !linux

package sqlite

import "os"

// datasyncFile flushes f to stable storage.
func datasyncFile(f *os.File) error { return f.Sync() }
