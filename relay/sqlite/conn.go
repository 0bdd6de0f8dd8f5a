package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/hookbridge/hookbridge/relay"
)

// conn is one SQLite connection held for the queue's lifetime, with its
// statements prepared once: SQLite compiles a statement in tens of
// microseconds, more than running most of these. Transactions are begun and
// ended with prepared statements too, instead of database/sql's Tx, which
// compiles BEGIN and COMMIT anew each time. Write transactions are
// serialized by the queue (writeMu and the file lock).
//
// A SQLite connection runs one statement at a time, and database/sql shares
// a prepared statement between the goroutines using it, so two goroutines
// on one conn read each other's rows or crash. Whoever uses a conn holds it
// (hold) for the whole use: one statement, a read of several, or a
// transaction. exec, row and query check that it is held.
type conn struct {
	db *sql.DB
	c  *sql.Conn

	inUse  sync.Mutex
	mu     sync.Mutex // guards stmts
	stmts  map[string]*sql.Stmt
	closed atomic.Bool
}

// hold takes the connection for one use; call the returned function when
// the use (and any rows it read) is done.
func (c *conn) hold() (release func()) {
	c.inUse.Lock()
	return c.inUse.Unlock
}

// mustBeHeld panics when the connection is used without being held: the
// misuse would otherwise show only as a rare crash under load.
func (c *conn) mustBeHeld() {
	if c.inUse.TryLock() {
		c.inUse.Unlock()
		panic("sqlite queue: connection used without hold")
	}
}

func newConn(ctx context.Context, db *sql.DB) (*conn, error) {
	c, err := db.Conn(ctx)
	if err != nil {
		return nil, err
	}
	return &conn{db: db, c: c, stmts: make(map[string]*sql.Stmt)}, nil
}

// stmt returns query prepared on this connection.
func (c *conn) stmt(ctx context.Context, query string) (*sql.Stmt, error) {
	c.mustBeHeld()
	c.mu.Lock()
	defer c.mu.Unlock()
	if s, ok := c.stmts[query]; ok {
		return s, nil
	}
	s, err := c.c.PrepareContext(ctx, query)
	if err != nil {
		return nil, fmt.Errorf("prepare statement: %w", c.closedErr(err))
	}
	c.stmts[query] = s
	return s, nil
}

func (c *conn) exec(ctx context.Context, query string, args ...any) (sql.Result, error) {
	s, err := c.stmt(ctx, query)
	if err != nil {
		return nil, err
	}
	res, err := s.ExecContext(ctx, args...)
	return res, c.closedErr(err)
}

func (c *conn) query(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	s, err := c.stmt(ctx, query)
	if err != nil {
		return nil, err
	}
	rows, err := s.QueryContext(ctx, args...)
	return rows, c.closedErr(err)
}

// row runs a query expected to return one row and scans it; sql.ErrNoRows
// if there is none.
func (c *conn) row(ctx context.Context, query string, args []any, dest ...any) error {
	s, err := c.stmt(ctx, query)
	if err != nil {
		return err
	}
	err = c.closedErr(s.QueryRowContext(ctx, args...).Scan(dest...))
	return err
}

// closedErr reports a statement that lost the race with close as
// relay.ErrClosed.
func (c *conn) closedErr(err error) error {
	if err != nil && c.closed.Load() {
		return fmt.Errorf("%w (%w)", relay.ErrClosed, err)
	}
	return err
}

// tx runs fn between BEGIN IMMEDIATE and COMMIT, rolling back if fn or the
// commit fails.
//
// BEGIN and COMMIT run whatever ctx does: the driver reports a statement
// during which ctx ended as failed even when it succeeded, so a BEGIN cut
// off that way would leave the connection inside a transaction nobody ends
// (every later one failing, other processes kept waiting), and a COMMIT
// would be reported as failed after it committed. Neither waits long: the
// queue's write lock is already held.
func (c *conn) tx(ctx context.Context, fn func() error) error {
	ctx = context.WithoutCancel(ctx)
	if _, err := c.exec(ctx, "BEGIN IMMEDIATE"); err != nil {
		c.rollback() // in case it began after all
		return unavailable("begin", err)
	}
	if err := fn(); err != nil {
		c.rollback()
		return err
	}
	if _, err := c.exec(ctx, "COMMIT"); err != nil {
		c.rollback()
		return unavailable("commit", err)
	}
	return nil
}

// rollback ends a failed transaction, whatever the caller's context: a
// transaction left open would hold the write lock. Its error is of no use:
// it fails only when SQLite already rolled back (as a failed COMMIT on a
// full disk does), and the caller reports the failure that led here.
func (c *conn) rollback() {
	c.exec(context.Background(), "ROLLBACK")
}

func (c *conn) close() error {
	if c == nil {
		return nil
	}
	// Wait for the use in progress (a reader, the background checkpoint):
	// closing a statement under a row still being read frees memory SQLite
	// is using. Later uses fail, and report relay.ErrClosed.
	c.closed.Store(true)
	defer c.hold()()
	var errs []error
	c.mu.Lock()
	for _, s := range c.stmts {
		errs = append(errs, s.Close())
	}
	c.mu.Unlock()
	errs = append(errs, c.c.Close(), c.db.Close())
	return errors.Join(errs...)
}
