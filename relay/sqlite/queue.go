package sqlite

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hookbridge/hookbridge/relay"
)

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
// Background work (checkpoints, health checks, cross-process wake-ups) runs
// in Run; without it the queue still works, but its write-ahead log is only
// folded into the database when the last process closes it, and receivers
// poll for other processes' sends every 50ms. All methods are safe for
// concurrent use.
type Queue struct {
	cfg     Config
	log     *slog.Logger
	metrics *Metrics
	path    string

	// Four connections: one for sends (made durable by wal), one for
	// receiving and settling, one for checkpoints and probes, one for reads
	// outside transactions. writeMu serializes this process's write
	// transactions and guards idx; lock serializes the processes sharing the
	// file.
	send    *conn
	settle  *conn
	ckpt    *conn
	read    *conn
	writeMu sync.Mutex
	lock    fileLock
	wal     *walSyncer
	idx     *index // under writeMu

	ops        combiner // claims, settlements and renewals, in shared transactions
	prefetched prefetched

	wake *notifier
	// signal is written after every commit that may let a receiver make
	// progress, so receivers in other processes wake (see Run); it also
	// carries the cross-process write lock.
	signal *os.File
	// receiving is closed by the first Receive: Run starts watching for
	// other processes' commits only in a process that receives.
	receiving     chan struct{}
	receivingOnce sync.Once
	watching      atomic.Bool   // Run is watching for other processes' commits
	outside       atomic.Uint64 // commits other processes signalled

	health health
	// probing is the readiness probe in progress, if any: Ready callers
	// share it, and stop waiting for it when their context ends.
	probeMu sync.Mutex
	probing *probeRun
	// walFull tells Run that a commit found the log file over walFileLimit.
	walFull chan struct{}
	// frameSize is the size of one frame of the write-ahead log: a page and
	// its header.
	frameSize int64

	mu      sync.Mutex
	closed  bool
	closing chan struct{}
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
	q := &Queue{
		cfg: cfg, log: log, metrics: cfg.Metrics, path: path,
		idx: newIndex(cfg.DuplicateWindow), wake: newNotifier(), receiving: make(chan struct{}), closing: make(chan struct{}),
		walFull: make(chan struct{}, 1),
	}
	q.ops.q = q
	_, statErr := os.Stat(path + "-notify")
	if err := q.open(ctx); err != nil {
		q.closeFiles()
		if os.IsNotExist(statErr) {
			os.Remove(path + "-notify") // a refused path keeps nothing of ours
		}
		return nil, fmt.Errorf("open sqlite queue %s: %w", path, err)
	}
	return q, nil
}

func (q *Queue) open(ctx context.Context) error {
	if err := checkDir(q.path); err != nil {
		return err
	}
	var err error
	// The notification file doubles as the cross-process write lock, so it
	// is opened first: a directory this user cannot write fails here, with
	// the operating system's own words.
	if q.signal, err = os.OpenFile(q.path+"-notify", os.O_RDWR|os.O_CREATE, 0o644); err != nil {
		return fmt.Errorf("create the notification file (the directory must be writable by this user): %w", err)
	}
	q.lock = fileLock{f: q.signal}
	for _, c := range []**conn{&q.send, &q.settle, &q.ckpt, &q.read} {
		if *c, err = openConn(ctx, q.path, q.cfg.BusyTimeout); err != nil {
			return err
		}
		if c == &q.send {
			if err := checkOwnFile(ctx, q.send); err != nil {
				return err
			}
			// WAL mode is persistent: set once, every later connection
			// uses it.
			if err := enableWAL(ctx, q.send, q.cfg.BusyTimeout); err != nil {
				return fmt.Errorf("enable WAL: %w", err)
			}
			if _, err := q.writeTx(ctx, q.send, func() error { return createSchema(ctx, q.send) }); err != nil {
				return err
			}
		}
	}
	if q.wal, err = newWALSyncer(q.path+"-wal", q.metrics); err != nil {
		return err
	}
	var pageSize int64
	defer q.read.hold()()
	if err := q.read.row(ctx, "PRAGMA page_size", nil, &pageSize); err != nil {
		return explain(err)
	}
	q.frameSize = pageSize + 24
	return nil
}

// Config returns the queue's effective settings (defaults filled in).
func (q *Queue) Config() Config { return q.cfg }

func (q *Queue) isClosed() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.closed
}

// Close stops the queue: blocked receivers return relay.ErrClosed and later
// calls fail with it. The last process to close the file folds the
// write-ahead log into the database. It is safe to call more than once.
func (q *Queue) Close() error {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return nil
	}
	q.mu.Unlock()
	// Give back what a receive claimed and nobody was handed, while the
	// queue still takes settlements.
	if kept := q.prefetched.drain(); len(kept) > 0 {
		q.release(kept)
	}
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return nil
	}
	q.closed = true
	close(q.closing)
	q.mu.Unlock()
	q.wake.broadcast()
	q.writeMu.Lock() // let a running write transaction finish
	defer q.writeMu.Unlock()
	return q.closeFiles()
}

// closeFiles closes whatever is open.
func (q *Queue) closeFiles() error {
	var errs []error
	// The syncer first: it makes what sends are still waiting on durable,
	// and stops watching the log, which the last connection removes.
	if q.wal != nil {
		errs = append(errs, q.wal.close())
	}
	// The send connection last: the last connection to close folds the
	// log into the database.
	for _, c := range []*conn{q.read, q.ckpt, q.settle, q.send} {
		errs = append(errs, c.close())
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

// Ping checks that the database answers a read.
func (q *Queue) Ping(ctx context.Context) error {
	if q.isClosed() {
		return relay.ErrClosed
	}
	var n int
	defer q.read.hold()()
	if err := q.read.row(ctx, "SELECT 1", nil, &n); err != nil {
		return unavailable("ping", err)
	}
	return nil
}

// writeTx runs fn in an immediate (write-locked) transaction on c and
// returns the commit's generation in the write-ahead log (see walSyncer).
func (q *Queue) writeTx(ctx context.Context, c *conn, fn func() error) (uint64, error) {
	if q.isClosed() {
		return 0, relay.ErrClosed
	}
	from := time.Now()
	q.writeMu.Lock()
	defer q.writeMu.Unlock()
	if q.isClosed() {
		return 0, relay.ErrClosed
	}
	return q.lockedTx(ctx, c, from, fn)
}

// lockedTx is writeTx with writeMu already held, taken from the time
// given.
func (q *Queue) lockedTx(ctx context.Context, c *conn, from time.Time, fn func() error) (uint64, error) {
	err := q.lock.lock(ctx, q.cfg.BusyTimeout)
	q.metrics.waited(q.writerOf(c), time.Since(from)) // a wait that gave up too
	if err != nil {
		return 0, unavailable("lock", err)
	}
	defer q.lock.unlock()
	defer c.hold()()
	if err := c.tx(ctx, fn); err != nil {
		return 0, err
	}
	var gen uint64
	if q.wal != nil {
		gen = q.wal.committed()
		if q.wal.size() > walFileLimit {
			select {
			case q.walFull <- struct{}{}:
			default:
			}
		}
	}
	return gen, nil
}

// MaxMessageBytes is the largest message body SendBatch takes
// (max_message_bytes).
func (q *Queue) MaxMessageBytes() int { return q.cfg.MaxMessageBytes }

// writerOf names the writer that writes through c, for the lock wait's
// metric.
func (q *Queue) writerOf(c *conn) writer {
	switch c {
	case q.send:
		return writerSend
	case q.settle:
		return writerReceive
	}
	return writerBackground
}

// Counts returns how many messages are active (waiting or locked) and
// dead-lettered.
func (q *Queue) Counts(ctx context.Context) (active, deadLettered int64, err error) {
	if q.isClosed() {
		return 0, 0, relay.ErrClosed
	}
	release := q.read.hold()
	err = q.read.row(ctx, `SELECT (SELECT count(*) FROM queue), (SELECT count(*) FROM deadletter)`, nil, &active, &deadLettered)
	release()
	if err != nil {
		return 0, 0, unavailable("count", err)
	}
	return active, deadLettered, nil
}
