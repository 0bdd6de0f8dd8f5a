package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"time"

	sqlite3 "modernc.org/sqlite"
	sqlite3lib "modernc.org/sqlite/lib"

	"github.com/hookbridge/hookbridge/relay"
)

// openConn opens one connection to the file at path (see openDB).
func openConn(ctx context.Context, path string, busy time.Duration) (*conn, error) {
	db, err := openDB(ctx, path, busy)
	if err != nil {
		return nil, err
	}
	c, err := newConn(ctx, db)
	if err != nil {
		db.Close()
		return nil, explain(err)
	}
	return c, nil
}

// openDB opens one connection to the file at path. Every connection commits
// with synchronous=NORMAL: the write-ahead log is not fsynced by a commit;
// sends fsync it themselves before they return (see walSyncer), and the log
// is fsynced before every checkpoint.
func openDB(ctx context.Context, path string, busy time.Duration) (*sql.DB, error) {
	dsn := (&url.URL{Scheme: "file", Path: path}).String() + "?" + url.Values{
		"_pragma": {
			fmt.Sprintf("busy_timeout(%d)", busy.Milliseconds()),
			"synchronous(NORMAL)",
			// Statement journals in memory, not in temporary files.
			"temp_store(MEMORY)",
			// Checkpoints run in the background (see Run), never inside a
			// commit.
			"wal_autocheckpoint(0)",
			// After a checkpoint lets the log start over, a log grown past
			// this is truncated back to it.
			fmt.Sprintf("journal_size_limit(%d)", walFileLimit),
			"foreign_keys(OFF)",
		},
		"_txlock": {"immediate"},
	}.Encode()
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(1)
	db.SetMaxIdleConns(1)
	db.SetConnMaxLifetime(0)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, explain(err)
	}
	return db, nil
}

// enableWAL switches the file to write-ahead logging. The switch takes an
// exclusive lock that SQLite's busy handler does not wait for, so processes
// opening a new file at the same moment retry it within the busy timeout.
func enableWAL(ctx context.Context, c *conn, busy time.Duration) error {
	deadline := time.Now().Add(busy)
	for wait := time.Millisecond; ; wait = min(2*wait, 50*time.Millisecond) {
		var mode string
		err := c.c.QueryRowContext(ctx, "PRAGMA journal_mode = WAL").Scan(&mode)
		if err == nil {
			if mode != "wal" {
				return fmt.Errorf("the file system does not support write-ahead logging (journal mode %q); use a local disk", mode)
			}
			return nil
		}
		if !isBusy(err) || time.Now().After(deadline) {
			return explain(err)
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func isBusy(err error) bool {
	var se *sqlite3.Error
	if errors.As(err, &se) {
		c := se.Code() & 0xff
		return c == sqlite3lib.SQLITE_BUSY || c == sqlite3lib.SQLITE_LOCKED
	}
	return false
}

// explain adds what the operator can do to the common database errors.
func explain(err error) error {
	var se *sqlite3.Error
	if !errors.As(err, &se) {
		return err
	}
	switch se.Code() & 0xff {
	case sqlite3lib.SQLITE_FULL:
		return fmt.Errorf("disk full; free space on the queue's volume: %w", err)
	case sqlite3lib.SQLITE_BUSY, sqlite3lib.SQLITE_LOCKED:
		return fmt.Errorf("database busy (another process holds the write lock longer than busy_timeout): %w", err)
	case sqlite3lib.SQLITE_READONLY, sqlite3lib.SQLITE_PERM:
		return fmt.Errorf("the database file cannot be written; check its owner, permissions and attributes (chattr -i): %w", err)
	case sqlite3lib.SQLITE_CANTOPEN:
		return fmt.Errorf("cannot open the database file or its -wal/-shm files; check that the directory exists and that this user may create and write files in it: %w", err)
	case sqlite3lib.SQLITE_IOERR:
		return fmt.Errorf("the disk refused a read or write (a permission or attribute change such as chattr +i, a removed or full volume); check the file and the volume: %w", err)
	case sqlite3lib.SQLITE_CORRUPT, sqlite3lib.SQLITE_NOTADB:
		return fmt.Errorf("the database file is damaged or not a hookbridge queue; restore it from a backup or choose another path: %w", err)
	}
	return err
}

// unavailable wraps a database error as relay.ErrUnavailable, saying what
// the operator can do about the common causes.
func unavailable(op string, err error) error {
	if errors.Is(err, relay.ErrUnavailable) || errors.Is(err, relay.ErrClosed) {
		return err
	}
	return fmt.Errorf("%w: sqlite %s: %w", relay.ErrUnavailable, op, explain(err))
}

// checkDir explains a path whose directory cannot hold the queue, before
// SQLite's terser "unable to open database file".
func checkDir(path string) error {
	dir := filepath.Dir(path)
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("directory %s does not exist; create it or choose another path", dir)
	case err != nil:
		return fmt.Errorf("directory %s: %w", dir, err)
	case !fi.IsDir():
		return fmt.Errorf("%s is not a directory; choose another path", dir)
	}
	return nil
}
