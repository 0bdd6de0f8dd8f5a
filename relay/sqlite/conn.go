package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
)

// conn is one SQLite connection held for the queue's lifetime, with its
// statements prepared once: SQLite compiles a statement in tens of
// microseconds, more than running most of these. Transactions are begun and
// ended with prepared statements too, instead of database/sql's Tx, which
// compiles BEGIN and COMMIT anew each time. Write transactions are
// serialized by the queue (writeMu and the file lock), so a connection never
// runs two at once.
type conn struct {
	db *sql.DB
	c  *sql.Conn

	mu    sync.Mutex
	stmts map[string]*sql.Stmt
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
	c.mu.Lock()
	defer c.mu.Unlock()
	if s, ok := c.stmts[query]; ok {
		return s, nil
	}
	s, err := c.c.PrepareContext(ctx, query)
	if err != nil {
		return nil, fmt.Errorf("prepare statement: %w", err)
	}
	c.stmts[query] = s
	return s, nil
}

func (c *conn) exec(ctx context.Context, query string, args ...any) (sql.Result, error) {
	s, err := c.stmt(ctx, query)
	if err != nil {
		return nil, err
	}
	return s.ExecContext(ctx, args...)
}

func (c *conn) query(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	s, err := c.stmt(ctx, query)
	if err != nil {
		return nil, err
	}
	return s.QueryContext(ctx, args...)
}

// row runs a query expected to return one row and scans it; sql.ErrNoRows
// if there is none.
func (c *conn) row(ctx context.Context, query string, args []any, dest ...any) error {
	s, err := c.stmt(ctx, query)
	if err != nil {
		return err
	}
	return s.QueryRowContext(ctx, args...).Scan(dest...)
}

// tx runs fn between BEGIN IMMEDIATE and COMMIT, rolling back if fn or the
// commit fails.
func (c *conn) tx(ctx context.Context, fn func() error) error {
	if _, err := c.exec(ctx, "BEGIN IMMEDIATE"); err != nil {
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
	var errs []error
	c.mu.Lock()
	for _, s := range c.stmts {
		errs = append(errs, s.Close())
	}
	c.mu.Unlock()
	errs = append(errs, c.c.Close(), c.db.Close())
	return errors.Join(errs...)
}
