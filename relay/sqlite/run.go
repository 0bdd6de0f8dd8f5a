package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hookbridge/hookbridge/relay"
)

// Background timing.
const (
	// checkpointEvery is how often Run folds the write-ahead log into the
	// database. Commits never checkpoint themselves (wal_autocheckpoint is
	// off), so no acknowledged send waits for one; but a checkpoint's fsync
	// of the database delays the log syncs that run beside it by about the
	// time it takes, so small frequent checkpoints hold the commit latency's
	// tail down: at 2,300 one-kilobyte messages a second, every 100ms gave
	// a p99 of 5.7-6.2ms against 8.3-9.4ms every second, for the same CPU.
	// Run's ticker has the same period, and a tick that comes a moment
	// early skips its checkpoint, so in practice one runs every 100 or
	// 200ms, about every 150ms on average; the figures above were measured
	// that way.
	checkpointEvery = 100 * time.Millisecond
	// walSizeLimit bounds the write-ahead log. A passive checkpoint lets the
	// next writer start the log over from its beginning, but under steady
	// load that moment never comes (each checkpoint finds new frames behind
	// it), and the log would grow without end; once the frames in use take
	// more than this, Run checkpoints in RESTART mode, which holds writers
	// off for the moment it takes to copy the last frames, so the next
	// commit writes from the log's beginning again. The file keeps its
	// blocks (a log truncated to nothing would make every commit allocate
	// new ones, and its fsync commit the file system's journal).
	walSizeLimit = 4 << 20
	// walFileLimit is the most the log file keeps between restarts
	// (journal_size_limit cuts it back to this at a restart); a commit that
	// finds it larger wakes Run at once.
	walFileLimit = 2 * walSizeLimit
	// walCheckEvery is how often Run looks at the log's size, besides
	// when a commit finds it over the limit.
	walCheckEvery = 100 * time.Millisecond
	// probeAfter is how long readiness trusts the last write's outcome
	// before it writes a probe of its own.
	probeAfter = time.Second
)

// health is what readiness knows: the outcome of the latest writes, a
// failure no retry mends (the log deleted), and background failures.
type health struct {
	mu           sync.Mutex
	lastOK       time.Time
	lastErr      error
	lastErrAt    time.Time
	fatalErr     error
	loopErr      error
	loopFailing  time.Time // since when a background step has been failing
	fatalLogOnce sync.Once
}

func (h *health) succeeded() {
	h.mu.Lock()
	h.lastOK = time.Now()
	h.mu.Unlock()
}

func (h *health) failed(err error) {
	if errors.Is(err, relay.ErrClosed) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return // the caller gave up; says nothing of the queue
	}
	h.mu.Lock()
	h.lastErr, h.lastErrAt = err, time.Now()
	h.mu.Unlock()
}

// stop records err as a failure no retry mends, unless one is recorded
// already, and reports whether it was the first.
func (h *health) stop(err error) (first bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.fatalErr != nil {
		return false
	}
	h.fatalErr = err
	return true
}

func (h *health) fatal() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.fatalErr
}

func (h *health) loop(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err == nil {
		h.loopErr, h.loopFailing = nil, time.Time{}
		return
	}
	if h.loopErr == nil {
		h.loopFailing = time.Now()
	}
	h.loopErr = err
}

// Ready reports whether the queue can take a commit now: nil, or why not.
// The write-ahead log deleted under the running processes, background
// checkpoints failing for a while, or the latest write having failed (disk
// full, permissions) make it unready. When no write succeeded recently it
// writes a small durable probe, so an idle queue on a full or read-only disk
// is reported too, and a recovered one becomes ready again.
func (q *Queue) Ready(ctx context.Context) error {
	if q.isClosed() {
		return relay.ErrClosed
	}
	h := &q.health
	h.mu.Lock()
	fatal, loopErr, loopSince := h.fatalErr, h.loopErr, h.loopFailing
	lastOK, lastErr, lastErrAt := h.lastOK, h.lastErr, h.lastErrAt
	h.mu.Unlock()
	switch {
	case fatal != nil:
		return fatal
	case loopErr != nil && time.Since(loopSince) > q.cfg.UnreadyAfter:
		return fmt.Errorf("background checkpoints have failed for %s: %w", time.Since(loopSince).Round(time.Second), loopErr)
	case lastErrAt.After(lastOK) || time.Since(lastOK) > probeAfter:
		if err := q.awaitProbe(ctx); err != nil {
			if lastErr != nil && lastErrAt.After(lastOK) {
				return fmt.Errorf("writes are failing: %w", lastErr)
			}
			return err
		}
	}
	return nil
}

// probeRun is one readiness probe; err is set before done is closed.
type probeRun struct {
	done chan struct{}
	err  error
}

// awaitProbe runs a probe, or joins the one in progress, and waits for it
// until ctx ends. The probe waits for the write lock and an fsync, neither
// of which a context can cut short, so it runs on its own goroutine:
// a readiness check on a stalled disk answers by its deadline, and one
// probe at a time runs however many checks time out.
func (q *Queue) awaitProbe(ctx context.Context) error {
	q.probeMu.Lock()
	p := q.probing
	if p == nil {
		p = &probeRun{done: make(chan struct{})}
		q.probing = p
		go func() {
			// Bounded by busy_timeout for the lock; the fsync is the disk's.
			p.err = q.probe(context.WithoutCancel(ctx))
			q.probeMu.Lock()
			q.probing = nil
			q.probeMu.Unlock()
			close(p.done)
		}()
	}
	q.probeMu.Unlock()
	select {
	case <-p.done:
		return p.err
	case <-ctx.Done():
		return unavailable("write probe", fmt.Errorf("no answer before the readiness check's deadline (the disk or the write lock is slow): %w", ctx.Err()))
	}
}

// probe commits a durable write about the size of a group commit's, so
// that the slack of a full volume's log does not pass for free space.
func (q *Queue) probe(ctx context.Context) error {
	gen, err := q.writeTx(ctx, q.ckpt, func() error {
		_, err := q.ckpt.exec(ctx, `INSERT OR REPLACE INTO probe (id, pad) VALUES (1, zeroblob(16384))`)
		return err
	})
	if err == nil {
		err = q.wal.wait(gen)
		q.syncFailed(err)
	}
	if err != nil {
		err = unavailable("write probe", err)
		q.health.failed(err)
		return err
	}
	q.health.succeeded()
	return nil
}

// Run does the queue's background work until ctx ends: it folds the
// write-ahead log into the database several times a second (bounding the
// log's size), checks that the log is still the file the processes write
// to, prunes the duplicate window, and, in a process that receives,
// watches for commits by other processes so receivers wake at once. It
// returns nil when ctx ends; failures are logged and reported by Ready.
func (q *Queue) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wg.Add(1)
	go func() {
		defer wg.Done()
		q.watchCommits(ctx)
	}()
	t := time.NewTicker(walCheckEvery)
	defer t.Stop()
	var lastCheckpoint, lastPrune time.Time
	var restarts restartState
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-q.closing:
			return nil
		case <-t.C:
		case <-q.walFull:
		}
		now := time.Now()
		// A log over its size wakes the loop at every commit; while
		// readers keep it from restarting, that is no reason to checkpoint
		// more often.
		if now.Sub(lastCheckpoint) < checkpointEvery && (q.wal.size() <= walFileLimit || restarts.failures > 0) {
			continue
		}
		lastCheckpoint = now
		if err := q.wal.gone(true); err != nil {
			q.walGone(err)
			continue
		}
		err := q.checkpoint(ctx, &restarts)
		if errors.Is(err, errReadersHoldLog) {
			// Not a failure of the queue: writes go on, into a longer log.
			q.log.Warn("sqlite queue: a reader (a backup, or another program reading the file) keeps the write-ahead log from starting over; it grows until the reader ends",
				"wal_bytes", q.wal.size(), "next_try", restarts.wait)
			err = nil
		}
		if err == nil && now.Sub(lastPrune) > pruneEvery {
			lastPrune = now
			err = q.pruneWindow(ctx, time.Now())
		}
		if err != nil && ctx.Err() == nil && !errors.Is(err, relay.ErrClosed) {
			q.log.Warn("sqlite queue: background checkpoint failed; will retry", "error", err)
		}
		if ctx.Err() == nil {
			q.health.loop(err)
		}
	}
}

// watchCommits, once this process receives, wakes its receivers whenever
// another process commits (the notification file is written).
func (q *Queue) watchCommits(ctx context.Context) {
	select {
	case <-q.receiving:
	case <-ctx.Done():
		return
	}
	w, err := watch(q.path+"-notify", func() {
		q.outside.Add(1)
		q.wake.broadcast()
	})
	if err != nil {
		q.log.Warn("sqlite queue: cannot watch for commits by other processes; receivers poll every 50ms", "error", err)
		return
	}
	q.watching.Store(true)
	<-ctx.Done()
	q.watching.Store(false)
	w.close()
}

// restartState is what Run remembers of its restarting checkpoints.
type restartState struct {
	// frames is the size of the log, in frames, that this process's last
	// restart left behind (0 for none): the log keeps reporting those
	// frames, all checkpointed, until the next write starts it over, and
	// restarting it again before then would only keep writers waiting.
	frames int
	// failures counts restarts in a row that readers kept from completing;
	// the next is not tried before notBefore, wait after the last one (from
	// restartRetry, doubling up to restartRetryMax).
	failures  int
	wait      time.Duration
	notBefore time.Time
}

// Restart retries: a reader that keeps the log in use (a backup of a large
// file, say) may do so for minutes, and every try holds the writers off for
// restartReaderWait.
const (
	restartRetry      = 100 * time.Millisecond
	restartRetryMax   = 5 * time.Second
	restartReaderWait = 50 * time.Millisecond
)

// errReadersHoldLog says a restarting checkpoint gave up waiting for
// readers of the log's older frames.
var errReadersHoldLog = errors.New("readers kept the write-ahead log in use")

// checkpoint runs a passive checkpoint, which never blocks anyone, and a
// restarting one when the frames in the log take more than walSizeLimit
// (see restartState).
func (q *Queue) checkpoint(ctx context.Context, rs *restartState) error {
	var busy, logFrames, done int
	release := q.ckpt.hold()
	start := time.Now()
	err := q.ckpt.row(ctx, "PRAGMA wal_checkpoint(PASSIVE)", nil, &busy, &logFrames, &done)
	release()
	q.metrics.checkpoint("passive", time.Since(start), err)
	if err != nil {
		return unavailable("checkpoint", err)
	}
	untouched := logFrames == rs.frames && done == logFrames
	used := int64(logFrames) * q.frameSize
	if used > walSizeLimit && !untouched && !time.Now().Before(rs.notBefore) {
		frames, took, err := q.restart(ctx)
		q.metrics.checkpoint("restart", took, err)
		if errors.Is(err, errReadersHoldLog) {
			rs.failures++
			rs.wait = min(restartRetry<<min(rs.failures-1, 10), restartRetryMax)
			rs.notBefore = time.Now().Add(rs.wait)
			q.metrics.wal(q.wal.size())
			return err
		}
		if err != nil {
			return fmt.Errorf("write-ahead log holds %d bytes of frames, over the %d limit: %w", used, walSizeLimit, err)
		}
		*rs = restartState{frames: frames}
	}
	q.metrics.wal(q.wal.size())
	return nil
}

// restart checkpoints everything and starts the log over, holding the
// write lock so that no writer of these processes waits in SQLite's busy
// handler meanwhile. It returns the frames the log held and how long the
// checkpoint itself took (0 if it never ran: the lock was not to be had).
func (q *Queue) restart(ctx context.Context) (frames int, took time.Duration, err error) {
	from := time.Now()
	q.writeMu.Lock()
	defer q.writeMu.Unlock()
	if q.isClosed() {
		return 0, 0, relay.ErrClosed
	}
	err = q.lock.lock(ctx, q.cfg.BusyTimeout)
	q.metrics.waited(writerBackground, time.Since(from))
	if err != nil {
		return 0, 0, unavailable("lock", err)
	}
	defer q.lock.unlock()
	var busy, done int
	defer q.ckpt.hold()()
	// Wait for readers only briefly: the writers of every process wait
	// behind this, and a reader that is still there after a moment may be
	// there for minutes. checkpoint tries again later.
	if _, err := q.ckpt.exec(ctx, fmt.Sprintf("PRAGMA busy_timeout = %d", restartReaderWait.Milliseconds())); err != nil {
		return 0, 0, unavailable("checkpoint", err)
	}
	defer func() {
		if _, err := q.ckpt.exec(context.WithoutCancel(ctx), fmt.Sprintf("PRAGMA busy_timeout = %d", q.cfg.BusyTimeout.Milliseconds())); err != nil {
			q.log.Warn("sqlite queue: could not restore busy_timeout on the checkpoint connection; its writes wait at most 50ms for other programs' locks", "error", err)
		}
	}()
	start := time.Now()
	err = q.ckpt.row(ctx, "PRAGMA wal_checkpoint(RESTART)", nil, &busy, &frames, &done)
	took = time.Since(start)
	if isBusy(err) || err == nil && busy != 0 {
		return 0, took, errReadersHoldLog
	}
	if err != nil {
		return 0, took, unavailable("checkpoint", err)
	}
	return frames, took, nil
}

// pruneWindow drops duplicate-window entries no message can still repeat,
// as of now. The log is in delivery order, so the expired entries are a
// prefix.
func (q *Queue) pruneWindow(ctx context.Context, now time.Time) error {
	// An empty window (an idle queue, once its window has passed, or the
	// window turned off) needs no write: every write takes the file lock
	// from the other processes, and clearing even an empty table commits
	// a page.
	var entries bool
	release := q.read.hold()
	err := q.read.row(ctx, `SELECT EXISTS (SELECT 1 FROM dedup_log)`, nil, &entries)
	release()
	if err != nil {
		return unavailable("prune duplicate window", err)
	}
	if !entries {
		return nil
	}
	_, err = q.writeTx(ctx, q.ckpt, func() error {
		cutoff, err := q.windowCutoff(ctx, q.ckpt, now.UnixNano())
		if err != nil {
			return unavailable("prune duplicate window", err)
		}
		var first sql.NullInt64
		if err := q.ckpt.row(ctx, `SELECT min(id) FROM dedup_log WHERE expires_at > ?`, []any{cutoff}, &first); err != nil {
			return unavailable("prune duplicate window", err)
		}
		query, args := `DELETE FROM dedup_log`, []any{}
		if first.Valid {
			query, args = `DELETE FROM dedup_log WHERE id < ?`, []any{first.Int64}
		}
		if _, err := q.ckpt.exec(ctx, query, args...); err != nil {
			return unavailable("prune duplicate window", err)
		}
		return nil
	})
	return err
}

// syncFailed, when err says an fsync of the log failed, stops the queue
// accepting messages for good, as walGone does: what that fsync covered may
// be lost, and every later acknowledgement would rest on it. Restarting
// the process reopens the log and recovers what is on disk.
func (q *Queue) syncFailed(err error) {
	if !errors.Is(err, errSyncFailed) {
		return
	}
	if q.health.stop(fmt.Errorf("%w; the queue stopped accepting messages: restart hookbridge (check the disk holding %s first)", err, q.path)) {
		q.log.Error("sqlite queue: an fsync of the write-ahead log failed; no more messages are accepted (503) until hookbridge restarts", "path", q.path+"-wal", "error", err)
	}
}

// walGone handles the write-ahead log disappearing under the running
// processes: SQLite keeps writing to the unlinked file, so nothing written
// since can be trusted to survive the process. The queue stops
// acknowledging sends and reports itself unready, and what the log holds is
// checkpointed into the database at once, so acknowledged messages are in
// the database file. Restarting every process that uses the file creates a
// new log.
func (q *Queue) walGone(cause error) {
	q.health.stop(fmt.Errorf("%w; the queue stopped accepting messages: restart every hookbridge process using %s", cause, q.path))
	q.health.fatalLogOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		var busy, logFrames, done int
		release := q.ckpt.hold()
		err := q.ckpt.row(ctx, "PRAGMA wal_checkpoint(FULL)", nil, &busy, &logFrames, &done)
		release()
		q.log.Error("sqlite queue: the write-ahead log was deleted or replaced while in use; no more messages are accepted (503) until every hookbridge process using the queue restarts",
			"path", q.path+"-wal", "error", cause, "rescue_checkpoint_error", err, "frames_saved", done)
	})
}
