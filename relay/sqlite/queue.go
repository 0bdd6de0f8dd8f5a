package sqlite

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	sqlite3 "modernc.org/sqlite"
	sqlite3lib "modernc.org/sqlite/lib"

	"github.com/hookbridge/hookbridge/relay"
)

const schema = `
CREATE TABLE IF NOT EXISTS messages (
	seq            INTEGER PRIMARY KEY AUTOINCREMENT,
	message_id     TEXT    NOT NULL,
	session_id     TEXT    NOT NULL,
	subject        TEXT    NOT NULL,
	content_type   TEXT    NOT NULL,
	properties     BLOB,
	body           BLOB    NOT NULL,
	enqueued_at    INTEGER NOT NULL,
	visible_at     INTEGER NOT NULL,
	locked_until   INTEGER NOT NULL DEFAULT 0,
	lock_token     TEXT,
	delivery_count INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS messages_session ON messages(session_id, seq);
CREATE INDEX IF NOT EXISTS messages_locked ON messages(locked_until) WHERE locked_until > 0;
CREATE INDEX IF NOT EXISTS messages_delayed ON messages(visible_at) WHERE visible_at > enqueued_at;
CREATE TABLE IF NOT EXISTS deadletters (
	seq              INTEGER PRIMARY KEY,
	message_id       TEXT    NOT NULL,
	session_id       TEXT    NOT NULL,
	subject          TEXT    NOT NULL,
	content_type     TEXT    NOT NULL,
	properties       BLOB,
	body             BLOB    NOT NULL,
	enqueued_at      INTEGER NOT NULL,
	delivery_count   INTEGER NOT NULL,
	reason           TEXT    NOT NULL,
	description      TEXT    NOT NULL,
	dead_lettered_at INTEGER NOT NULL,
	locked_until     INTEGER NOT NULL DEFAULT 0,
	lock_token       TEXT
);
CREATE TABLE IF NOT EXISTS dedup (
	message_id TEXT PRIMARY KEY,
	expires_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dedup_expiry ON dedup(expires_at);
`

// Queue is the embedded, durable queue: a SQLite database in WAL mode. Several
// processes may open the same file (an ingress and a worker, say); each
// message is handed to one receiver at a time, under a lock.
//
// Guarantees:
//   - SendBatch returns nil only after its transaction is committed and the
//     write-ahead log fsynced.
//   - Per session (partition key), messages are handed out one at a time, in
//     enqueue order: the next only after the previous was completed or
//     dead-lettered. Messages without a session are handed out in any order.
//   - Locks, settlements and delivery counts are committed without an fsync of
//     their own: a power loss may forget the latest of them, which can only
//     cause a redelivery, never a loss.
//
// All methods are safe for concurrent use.
type Queue struct {
	cfg Config
	log *slog.Logger

	// Three connections: one for sends (made durable by wal), one for
	// receiving and settling, one for checkpoints. writeMu serializes this
	// process's write transactions so they queue in Go instead of in
	// SQLite's sleeping busy handler; other processes are arbitrated by
	// SQLite's file locks.
	send    *sql.DB
	settle  *sql.DB
	ckpt    *sql.DB
	writeMu sync.Mutex
	wal     *walSyncer
	stmts   stmtCache // the send connection's, under writeMu
	bg      sync.WaitGroup

	wake    *notifier
	watcher *watcher
	// signal is written after every commit that may let a receiver make
	// progress, so receivers in other processes wake (see watch).
	signal *os.File

	mu        sync.Mutex
	closed    bool
	closing   chan struct{}
	lastPrune time.Time
}

// Open opens (creating if needed) the queue database at cfg.Path. log may be
// nil.
func Open(ctx context.Context, cfg Config, log *slog.Logger) (*Queue, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	path, err := filepath.Abs(cfg.Path)
	if err != nil {
		return nil, fmt.Errorf("open sqlite queue: resolve %q: %w", cfg.Path, err)
	}
	q := &Queue{cfg: cfg, log: log, wake: newNotifier(), closing: make(chan struct{})}
	if err := q.open(ctx, path); err != nil {
		q.closeFiles()
		return nil, err
	}
	q.bg.Add(1)
	go q.checkpointLoop()
	return q, nil
}

func (q *Queue) open(ctx context.Context, path string) error {
	var err error
	if q.send, err = openDB(path, q.cfg.BusyTimeout); err != nil {
		return err
	}
	// WAL mode is persistent: set once, every later connection uses it.
	if _, err := q.send.ExecContext(ctx, "PRAGMA journal_mode = WAL"); err != nil {
		return fmt.Errorf("open sqlite queue %s: enable WAL: %w", path, err)
	}
	if _, err := q.send.ExecContext(ctx, schema); err != nil {
		return fmt.Errorf("open sqlite queue %s: create tables: %w", path, err)
	}
	if err := migrate(ctx, q.send); err != nil {
		return fmt.Errorf("open sqlite queue %s: upgrade tables: %w", path, err)
	}
	if q.stmts, err = prepareStatements(ctx, q.send); err != nil {
		return fmt.Errorf("open sqlite queue %s: %w", path, err)
	}
	if q.settle, err = openDB(path, q.cfg.BusyTimeout); err != nil {
		return err
	}
	if q.ckpt, err = openDB(path, q.cfg.BusyTimeout); err != nil {
		return err
	}
	if q.wal, err = newWALSyncer(path + "-wal"); err != nil {
		return fmt.Errorf("open sqlite queue %s: %w", path, err)
	}
	// Other processes commit to the same file and write path-notify after
	// each commit: watch it so receivers here wake as soon as they do.
	if q.signal, err = os.OpenFile(path+"-notify", os.O_RDWR|os.O_CREATE, 0o644); err != nil {
		return fmt.Errorf("open sqlite queue %s: notification file: %w", path, err)
	}
	q.watcher, err = watch(path+"-notify", q.wake.broadcast)
	if err != nil {
		q.log.Warn("sqlite queue: cannot watch for commits by other processes; receivers fall back to polling", "error", err)
	}
	return nil
}

// openDB opens one connection. Every connection commits with
// synchronous=NORMAL: the write-ahead log is not fsynced by a commit; sends
// fsync it themselves before they return (see walSyncer), and the log is
// fsynced before every checkpoint.
func openDB(path string, busy time.Duration) (*sql.DB, error) {
	dsn := (&url.URL{Scheme: "file", Path: path}).String() + "?" + url.Values{
		"_pragma": {
			fmt.Sprintf("busy_timeout(%d)", busy.Milliseconds()),
			"synchronous(NORMAL)",
			// Statement journals in memory, not in temporary files.
			"temp_store(MEMORY)",
			// Checkpoints run in the background (see checkpointLoop), never
			// inside a commit.
			"wal_autocheckpoint(0)",
			fmt.Sprintf("journal_size_limit(%d)", 64<<20),
			"foreign_keys(OFF)",
		},
		"_txlock": {"immediate"},
	}.Encode()
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open sqlite queue %s: %w", path, err)
	}
	db.SetMaxOpenConns(1)
	db.SetMaxIdleConns(1)
	db.SetConnMaxLifetime(0)
	if err := db.Ping(); err != nil {
		db.Close()
		if dir := filepath.Dir(path); !isDir(dir) {
			return nil, fmt.Errorf("open sqlite queue %s: directory %s does not exist; create it or choose another path", path, dir)
		}
		return nil, fmt.Errorf("open sqlite queue %s: %w", path, err)
	}
	return db, nil
}

func isDir(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

// Config returns the queue's effective settings (defaults filled in).
func (q *Queue) Config() Config { return q.cfg }

func (q *Queue) isClosed() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.closed
}

// Close stops the queue: blocked receivers return relay.ErrClosed and later
// calls fail with it. It is safe to call more than once.
func (q *Queue) Close() error {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return nil
	}
	q.closed = true
	close(q.closing)
	q.mu.Unlock()
	q.wake.broadcast()
	if q.watcher != nil {
		q.watcher.close()
	}
	q.bg.Wait()
	q.writeMu.Lock() // let a running write transaction finish
	defer q.writeMu.Unlock()
	return q.closeFiles()
}

// closeFiles closes whatever is open.
func (q *Queue) closeFiles() error {
	var errs []error
	if q.stmts != nil {
		errs = append(errs, q.stmts.close())
	}
	for _, db := range []*sql.DB{q.send, q.settle, q.ckpt} {
		if db != nil {
			errs = append(errs, db.Close())
		}
	}
	if q.wal != nil {
		errs = append(errs, q.wal.close())
	}
	if q.signal != nil {
		errs = append(errs, q.signal.Close())
	}
	return errors.Join(errs...)
}

// notify wakes this process's receivers, and other processes' through the
// notification file.
func (q *Queue) notify() {
	q.wake.broadcast()
	q.signal.WriteAt([]byte{0}, 0) // best effort: receivers also poll
}

// Ping checks that the database answers.
func (q *Queue) Ping(ctx context.Context) error {
	if q.isClosed() {
		return relay.ErrClosed
	}
	var n int
	if err := q.settle.QueryRowContext(ctx, "SELECT 1").Scan(&n); err != nil {
		return fmt.Errorf("%w: sqlite: %w", relay.ErrUnavailable, err)
	}
	return nil
}

// writeTx runs fn in an immediate (write-locked) transaction on db and
// returns the commit's generation in the write-ahead log (see walSyncer).
func (q *Queue) writeTx(ctx context.Context, db *sql.DB, fn func(tx *sql.Tx) error) (uint64, error) {
	if q.isClosed() {
		return 0, relay.ErrClosed
	}
	q.writeMu.Lock()
	defer q.writeMu.Unlock()
	if q.isClosed() {
		return 0, relay.ErrClosed
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return 0, unavailable("begin", err)
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return 0, err
	}
	if err := tx.Commit(); err != nil {
		return 0, unavailable("commit", err)
	}
	return q.wal.committed(), nil
}

// unavailable wraps a database error as relay.ErrUnavailable, saying what
// the operator can do about the common causes.
func unavailable(op string, err error) error {
	var se *sqlite3.Error
	if errors.As(err, &se) {
		switch se.Code() & 0xff {
		case sqlite3lib.SQLITE_FULL:
			return fmt.Errorf("%w: sqlite %s: disk full; free space on the queue's volume: %w", relay.ErrUnavailable, op, err)
		case sqlite3lib.SQLITE_BUSY, sqlite3lib.SQLITE_LOCKED:
			return fmt.Errorf("%w: sqlite %s: database busy (another process holds the write lock): %w", relay.ErrUnavailable, op, err)
		case sqlite3lib.SQLITE_READONLY, sqlite3lib.SQLITE_CANTOPEN, sqlite3lib.SQLITE_PERM:
			return fmt.Errorf("%w: sqlite %s: the database file cannot be written; check its permissions: %w", relay.ErrUnavailable, op, err)
		}
	}
	if errors.Is(err, relay.ErrUnavailable) || errors.Is(err, relay.ErrClosed) {
		return err
	}
	return fmt.Errorf("%w: sqlite %s: %w", relay.ErrUnavailable, op, err)
}

// SendBatch adds msgs to the queue in one transaction and returns after it is
// durable. Messages whose ID was seen within the duplicate window are
// dropped. Either all new messages are added or none.
func (q *Queue) SendBatch(ctx context.Context, msgs []relay.Message) error {
	for i := range msgs {
		if len(msgs[i].Body) > q.cfg.MaxMessageBytes {
			return fmt.Errorf("%w: message %q is %d bytes; the queue takes at most %d (max_message_bytes)",
				relay.ErrMessageTooLarge, msgs[i].ID, len(msgs[i].Body), q.cfg.MaxMessageBytes)
		}
		if msgs[i].ID == "" {
			return fmt.Errorf("sqlite queue: message %d has no ID", i)
		}
	}
	added := 0
	gen, err := q.writeTx(ctx, q.send, func(tx *sql.Tx) error {
		added = 0
		now := time.Now()
		nowNS := now.UnixNano()
		if q.cfg.DuplicateWindow > 0 && now.Sub(q.lastPrune) > time.Second {
			q.lastPrune = now
			if _, err := tx.ExecContext(ctx, `DELETE FROM dedup WHERE message_id IN
				(SELECT message_id FROM dedup WHERE expires_at <= ? LIMIT 1000)`, nowNS); err != nil {
				return unavailable("prune duplicate window", err)
			}
		}
		// Multi-row statements: per-statement overhead, not per-row work,
		// dominates small inserts.
		for rest := msgs; len(rest) > 0; {
			chunk := rest[:chunkSize(len(rest))]
			rest = rest[len(chunk):]
			fresh := chunk
			if q.cfg.DuplicateWindow > 0 {
				var err error
				if fresh, err = q.dedup(ctx, tx, chunk, now); err != nil {
					return err
				}
			}
			if len(fresh) == 0 {
				continue
			}
			args := make([]any, 0, 8*len(fresh))
			for i := range fresh {
				m := &fresh[i]
				props, err := encodeProperties(m.Properties)
				if err != nil {
					return fmt.Errorf("sqlite queue: message %q: %w", m.ID, err)
				}
				args = append(args, m.ID, m.SessionID, m.Subject, m.ContentType, props, m.Body, nowNS, nowNS)
			}
			for len(args) > 0 {
				n := chunkSize(len(args) / 8)
				if _, err := q.stmts.get(ctx, tx, insertStmt, n).ExecContext(ctx, args[:8*n]...); err != nil {
					return unavailable("insert", err)
				}
				args = args[8*n:]
			}
			added += len(fresh)
		}
		return nil
	})
	if err != nil {
		return err
	}
	// Durable before acknowledged. Receivers may already see the messages;
	// that is harmless, since only the acknowledgement promises anything.
	if added > 0 {
		q.notify()
	}
	if err := q.wal.wait(gen); err != nil {
		return unavailable("sync", err)
	}
	return nil
}

// dedup records the chunk's IDs in the duplicate window and returns the
// messages not seen within it (the first of any repeated within the chunk).
func (q *Queue) dedup(ctx context.Context, tx *sql.Tx, chunk []relay.Message, now time.Time) ([]relay.Message, error) {
	args := make([]any, 0, 2*len(chunk)+1)
	expires := now.Add(q.cfg.DuplicateWindow).UnixNano()
	for i := range chunk {
		args = append(args, chunk[i].ID, expires)
	}
	args = append(args, now.UnixNano())
	// An ID is new if inserted, or updated because its entry had expired;
	// RETURNING yields exactly those rows.
	rows, err := q.stmts.get(ctx, tx, dedupStmt, len(chunk)).QueryContext(ctx, args...)
	if err != nil {
		return nil, unavailable("duplicate check", err)
	}
	fresh := make(map[string]bool, len(chunk))
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return nil, unavailable("duplicate check", err)
		}
		fresh[id] = true
	}
	if err := rows.Close(); err != nil {
		return nil, unavailable("duplicate check", err)
	}
	out := chunk[:0:0]
	for _, m := range chunk {
		if fresh[m.ID] {
			out = append(out, m)
			delete(fresh, m.ID) // a repeat later in the chunk is a duplicate
		}
	}
	return out, nil
}

// chunkSize is the largest power of two ≤ min(n, maxChunk): batches are
// split into such chunks so that few distinct statements are ever prepared.
func chunkSize(n int) int {
	c := 1
	for c*2 <= min(n, maxChunk) {
		c *= 2
	}
	return c
}

// maxChunk is the most rows per multi-row statement (8 parameters each, well
// under SQLite's variable limit).
const maxChunk = 256

type stmtKind int

const (
	insertStmt stmtKind = iota
	dedupStmt
)

// stmtCache holds the send connection's prepared multi-row statements, by
// kind and row count: every power of two up to maxChunk, prepared at open
// (preparing later would need a second connection while a transaction holds
// the only one).
type stmtCache map[[2]int]*sql.Stmt

func prepareStatements(ctx context.Context, db *sql.DB) (stmtCache, error) {
	c := stmtCache{}
	for n := 1; n <= maxChunk; n *= 2 {
		for _, kind := range []stmtKind{insertStmt, dedupStmt} {
			stmt, err := db.PrepareContext(ctx, statementSQL(kind, n))
			if err != nil {
				c.close()
				return nil, fmt.Errorf("prepare statements: %w", err)
			}
			c[[2]int{int(kind), n}] = stmt
		}
	}
	return c, nil
}

func (c stmtCache) close() error {
	var errs []error
	for _, stmt := range c {
		errs = append(errs, stmt.Close())
	}
	return errors.Join(errs...)
}

// get returns the statement for n rows (a power of two), bound to tx.
func (c stmtCache) get(ctx context.Context, tx *sql.Tx, kind stmtKind, n int) *sql.Stmt {
	return tx.StmtContext(ctx, c[[2]int{int(kind), n}])
}

func statementSQL(kind stmtKind, n int) string {
	var b strings.Builder
	switch kind {
	case insertStmt:
		b.WriteString(`INSERT INTO messages (message_id, session_id, subject, content_type, properties, body, enqueued_at, visible_at) VALUES `)
		for i := range n {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString("(?,?,?,?,?,?,?,?)")
		}
	case dedupStmt:
		// An ID is new if inserted, or updated because its entry had
		// expired; RETURNING yields exactly those rows. The last parameter
		// is the current time.
		b.WriteString(`INSERT INTO dedup (message_id, expires_at) VALUES `)
		for i := range n {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString("(?,?)")
		}
		fmt.Fprintf(&b, ` ON CONFLICT(message_id) DO UPDATE SET expires_at = excluded.expires_at WHERE dedup.expires_at <= ?%d RETURNING message_id`, 2*n+1)
	}
	return b.String()
}

// Receive waits until at least one message is available (or ctx ends, or
// the queue closes) and returns up to n messages, each locked for the
// queue's lock duration. Messages delivered the maximum number of times are
// moved to the dead-letter queue instead.
func (q *Queue) Receive(ctx context.Context, n int) ([]*relay.Received, error) {
	if n <= 0 {
		n = 1
	}
	for {
		woken := q.wake.wait()
		msgs, due, err := q.claim(ctx, n)
		if err != nil || len(msgs) > 0 {
			return msgs, err
		}
		// Nothing ready: sleep until another send or settlement, the next
		// lock expiry or delay, or a safety poll for missed wake-ups.
		wait := time.Second
		if q.watcher == nil {
			wait = 50 * time.Millisecond
		}
		if !due.IsZero() {
			if d := time.Until(due); d < wait {
				wait = max(d, time.Millisecond)
			}
		}
		t := time.NewTimer(wait)
		select {
		case <-woken:
		case <-t.C:
		case <-q.closing:
			t.Stop()
			return nil, relay.ErrClosed
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		}
		t.Stop()
	}
}

const claimQuery = `
SELECT seq, message_id, session_id, subject, content_type, properties, body, enqueued_at, delivery_count
FROM messages AS m
WHERE m.visible_at <= ?1 AND m.locked_until <= ?1
  AND (m.session_id = '' OR NOT EXISTS
       (SELECT 1 FROM messages AS p WHERE p.session_id = m.session_id AND p.seq < m.seq))
ORDER BY m.seq
LIMIT ?2`

// claim locks up to n ready messages. With none ready it returns when the
// next locked or delayed message becomes due (zero if none).
func (q *Queue) claim(ctx context.Context, n int) ([]*relay.Received, time.Time, error) {
	var out []*relay.Received
	var due time.Time
	exhausted := 0
	_, err := q.writeTx(ctx, q.settle, func(tx *sql.Tx) error {
		now := time.Now()
		nowNS := now.UnixNano()
		rows, err := tx.QueryContext(ctx, claimQuery, nowNS, n)
		if err != nil {
			return unavailable("receive", err)
		}
		var over []int64
		for rows.Next() {
			r := &relay.Received{}
			var props []byte
			var enq int64
			if err := rows.Scan(&r.SequenceNumber, &r.ID, &r.SessionID, &r.Subject, &r.ContentType, &props, &r.Body, &enq, &r.DeliveryCount); err != nil {
				rows.Close()
				return unavailable("receive", err)
			}
			if r.DeliveryCount >= q.cfg.MaxDeliveryCount {
				over = append(over, r.SequenceNumber)
				continue
			}
			if r.Properties, err = decodeProperties(props); err != nil {
				rows.Close()
				return fmt.Errorf("sqlite queue: message %d: %w", r.SequenceNumber, err)
			}
			r.EnqueuedTime = time.Unix(0, enq)
			out = append(out, r)
		}
		if err := rows.Close(); err != nil {
			return unavailable("receive", err)
		}
		if err := rows.Err(); err != nil {
			return unavailable("receive", err)
		}
		desc := fmt.Sprintf("the message was delivered %d times without being completed (max_delivery=%d)", q.cfg.MaxDeliveryCount, q.cfg.MaxDeliveryCount)
		for _, seq := range over {
			if err := moveToDeadLetter(ctx, tx, seq, relay.ReasonMaxDelivery, desc, nowNS); err != nil {
				return err
			}
		}
		exhausted = len(over)
		lockedUntil := now.Add(q.cfg.LockDuration)
		for _, r := range out {
			r.LockToken = uuid.NewString()
			r.LockedUntil = lockedUntil
			r.DeliveryCount++
			if _, err := tx.ExecContext(ctx, `UPDATE messages SET locked_until = ?, lock_token = ?, delivery_count = ? WHERE seq = ?`,
				lockedUntil.UnixNano(), r.LockToken, r.DeliveryCount, r.SequenceNumber); err != nil {
				return unavailable("lock", err)
			}
		}
		if len(out) == 0 {
			var lock, delay sql.NullInt64
			if err := tx.QueryRowContext(ctx, `SELECT
				(SELECT min(locked_until) FROM messages WHERE locked_until > 0 AND locked_until > ?1),
				(SELECT min(visible_at) FROM messages WHERE visible_at > enqueued_at AND visible_at > ?1)`, nowNS).Scan(&lock, &delay); err != nil {
				return unavailable("receive", err)
			}
			for _, v := range []sql.NullInt64{lock, delay} {
				if v.Valid && (due.IsZero() || v.Int64 < due.UnixNano()) {
					due = time.Unix(0, v.Int64)
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, time.Time{}, err
	}
	if exhausted > 0 {
		q.log.Warn("sqlite queue: messages dead-lettered after too many deliveries",
			"count", exhausted, "max_delivery", q.cfg.MaxDeliveryCount)
		if len(out) == 0 {
			// Dead-lettering a session's head frees the next message.
			return q.claim(ctx, n)
		}
	}
	return out, due, nil
}

func moveToDeadLetter(ctx context.Context, tx *sql.Tx, seq int64, reason, desc string, nowNS int64) error {
	if _, err := tx.ExecContext(ctx, `INSERT INTO deadletters
		(seq, message_id, session_id, subject, content_type, properties, body, enqueued_at, delivery_count, reason, description, dead_lettered_at)
		SELECT seq, message_id, session_id, subject, content_type, properties, body, enqueued_at, delivery_count, ?, ?, ?
		FROM messages WHERE seq = ?`, reason, desc, nowNS, seq); err != nil {
		return unavailable("dead-letter", err)
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM messages WHERE seq = ?`, seq); err != nil {
		return unavailable("dead-letter", err)
	}
	return nil
}

// settleTx runs fn for a message whose lock m still holds; otherwise it
// returns relay.ErrLockLost. Settling wakes receivers: it may have freed the
// next message of a session.
func (q *Queue) settleTx(ctx context.Context, m *relay.Received, what string, fn func(tx *sql.Tx, nowNS int64, deliveries int) error) error {
	_, err := q.writeTx(ctx, q.settle, func(tx *sql.Tx) error {
		nowNS := time.Now().UnixNano()
		var deliveries int
		err := tx.QueryRowContext(ctx, `SELECT delivery_count FROM messages WHERE seq = ? AND lock_token = ? AND locked_until > ?`,
			m.SequenceNumber, m.LockToken, nowNS).Scan(&deliveries)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("%s message %d: %w", what, m.SequenceNumber, relay.ErrLockLost)
		}
		if err != nil {
			return unavailable(what, err)
		}
		return fn(tx, nowNS, deliveries)
	})
	if err == nil {
		q.notify()
	}
	return err
}

// Complete removes a delivered message from the queue.
func (q *Queue) Complete(ctx context.Context, m *relay.Received) error {
	return q.settleTx(ctx, m, "complete", func(tx *sql.Tx, _ int64, _ int) error {
		if _, err := tx.ExecContext(ctx, `DELETE FROM messages WHERE seq = ?`, m.SequenceNumber); err != nil {
			return unavailable("complete", err)
		}
		return nil
	})
}

// Abandon releases the lock so the message is delivered again, after delay
// if delay > 0; its session stays blocked until then. A message that has
// reached the maximum delivery count is dead-lettered instead.
func (q *Queue) Abandon(ctx context.Context, m *relay.Received, delay time.Duration) error {
	return q.settleTx(ctx, m, "abandon", func(tx *sql.Tx, nowNS int64, deliveries int) error {
		if deliveries >= q.cfg.MaxDeliveryCount {
			desc := fmt.Sprintf("the message was delivered %d times without being completed (max_delivery=%d)", deliveries, q.cfg.MaxDeliveryCount)
			return moveToDeadLetter(ctx, tx, m.SequenceNumber, relay.ReasonMaxDelivery, desc, nowNS)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE messages SET locked_until = 0, lock_token = NULL,
			visible_at = max(visible_at, ?) WHERE seq = ?`, nowNS+max(delay, 0).Nanoseconds(), m.SequenceNumber); err != nil {
			return unavailable("abandon", err)
		}
		return nil
	})
}

// DeadLetter moves a delivered message to the dead-letter queue with a reason
// and description.
func (q *Queue) DeadLetter(ctx context.Context, m *relay.Received, reason, description string) error {
	return q.settleTx(ctx, m, "dead-letter", func(tx *sql.Tx, nowNS int64, _ int) error {
		return moveToDeadLetter(ctx, tx, m.SequenceNumber, reason, description, nowNS)
	})
}

// RenewLock extends m's lock by the lock duration and updates m.LockedUntil.
func (q *Queue) RenewLock(ctx context.Context, m *relay.Received) error {
	until := time.Now().Add(q.cfg.LockDuration)
	_, err := q.writeTx(ctx, q.settle, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE messages SET locked_until = ? WHERE seq = ? AND lock_token = ? AND locked_until > ?`,
			until.UnixNano(), m.SequenceNumber, m.LockToken, time.Now().UnixNano())
		if err != nil {
			return unavailable("renew lock", err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("renew lock of message %d: %w", m.SequenceNumber, relay.ErrLockLost)
		}
		return nil
	})
	if err == nil {
		m.LockedUntil = until
	}
	return err
}

// Counts returns how many messages are active (waiting or locked) and
// dead-lettered.
func (q *Queue) Counts(ctx context.Context) (active, deadLettered int64, err error) {
	if q.isClosed() {
		return 0, 0, relay.ErrClosed
	}
	err = q.settle.QueryRowContext(ctx, `SELECT (SELECT count(*) FROM messages), (SELECT count(*) FROM deadletters)`).Scan(&active, &deadLettered)
	if err != nil {
		return 0, 0, unavailable("count", err)
	}
	return active, deadLettered, nil
}

// encodeProperties stores application properties as JSON. Values must be
// string, bool, int64 (or another integer type) or float64.
func encodeProperties(p map[string]any) ([]byte, error) {
	if len(p) == 0 {
		return nil, nil
	}
	for k, v := range p {
		switch v.(type) {
		case string, bool, int, int32, int64, uint32, float64:
		default:
			return nil, fmt.Errorf("application property %q has unsupported type %T", k, v)
		}
	}
	return json.Marshal(p)
}

func decodeProperties(b []byte) (map[string]any, error) {
	if len(b) == 0 {
		return nil, nil
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var raw map[string]any
	if err := d.Decode(&raw); err != nil {
		return nil, fmt.Errorf("decode application properties: %w", err)
	}
	for k, v := range raw {
		if n, ok := v.(json.Number); ok {
			if i, err := n.Int64(); err == nil {
				raw[k] = i
			} else if f, err := n.Float64(); err == nil {
				raw[k] = f
			}
		}
	}
	return raw, nil
}

// migrate brings files made by earlier versions up to the current schema.
func migrate(ctx context.Context, db *sql.DB) error {
	rows, err := db.QueryContext(ctx, `SELECT name FROM pragma_table_info('deadletters')`)
	if err != nil {
		return err
	}
	cols := map[string]bool{}
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			rows.Close()
			return err
		}
		cols[name] = true
	}
	rows.Close()
	if !cols["locked_until"] {
		for _, stmt := range []string{
			`ALTER TABLE deadletters ADD COLUMN locked_until INTEGER NOT NULL DEFAULT 0`,
			`ALTER TABLE deadletters ADD COLUMN lock_token TEXT`,
		} {
			if _, err := db.ExecContext(ctx, stmt); err != nil {
				return err
			}
		}
	}
	return nil
}
