//go:build !unix

package sqlite

import (
	"context"
	"os"
	"time"
)

// fileLock does nothing here: writers wait in SQLite's busy handler.
type fileLock struct{ f *os.File }

func (*fileLock) lock(context.Context, time.Duration) error { return nil }
func (*fileLock) unlock() error                             { return nil }
