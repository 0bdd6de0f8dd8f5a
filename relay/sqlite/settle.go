package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"time"

	"github.com/hookbridge/hookbridge/relay"
)

// Complete removes a delivered message from the queue.
func (q *Queue) Complete(ctx context.Context, m *relay.Received) error {
	return q.ops.do(ctx, &op{kind: opComplete, m: m})
}

// Abandon releases the lock so the message is delivered again, after delay
// if delay > 0; its session stays blocked until then. A message that has
// reached the maximum delivery count is dead-lettered instead. The delay is
// kept by the queue, not waited for, so ctx ending does not stop or shorten
// it: a stopping worker's abandonment keeps its backoff.
func (q *Queue) Abandon(ctx context.Context, m *relay.Received, delay time.Duration) error {
	return q.ops.do(context.WithoutCancel(ctx), &op{kind: opAbandon, m: m, delay: max(delay, 0)})
}

// DeadLetter moves a delivered message to the dead-letter queue with a reason
// and description.
func (q *Queue) DeadLetter(ctx context.Context, m *relay.Received, reason, description string) error {
	return q.ops.do(ctx, &op{kind: opDeadLetter, m: m, reason: reason, description: description})
}

// RenewLock extends m's lock by the lock duration and updates m.LockedUntil.
func (q *Queue) RenewLock(ctx context.Context, m *relay.Received) error {
	o := &op{kind: opRenew, m: m, until: time.Now().Add(q.cfg.LockDuration)}
	if err := q.ops.do(ctx, o); err != nil {
		return err
	}
	m.LockedUntil = o.until
	return nil
}

type opKind int

const (
	opComplete opKind = iota
	opAbandon
	opDeadLetter
	opRenew
	opClaim
	opRelease
)

var opNames = [...]string{"complete", "abandon", "dead-letter", "renew lock of", "receive", "give back"}

// op is one settlement, renewal or claim.
type op struct {
	kind        opKind
	m           *relay.Received
	delay       time.Duration
	reason      string
	description string
	until       time.Time
	n           int // claim: at most this many

	err          error
	out          []*relay.Received // claim: what it handed out
	due          time.Time         // claim: when to look again if out is empty
	deadLettered bool              // abandoned past the maximum delivery count
	done         chan struct{}
}

// batch is what one shared transaction did besides each op's own result.
type batch struct {
	refreshed bool
	// mutated says the index was changed in ways only the commit makes
	// true (a message removed, locked or recorded in the window): a
	// rollback must rebuild it.
	mutated    bool
	released   bool     // a session's next message may be due
	expired    []string // MessageIDs dead-lettered when their last lock expired
	invalid    []string // MessageIDs dead-lettered as unreadable
	duplicates int
}

// combiner runs concurrent claims, settlements and renewals in shared
// transactions: the first caller to find none running becomes the leader
// and commits everything queued meanwhile in one transaction (settlements
// first, so a claim in the same transaction finds the sessions they freed),
// again until nothing is queued; the others wait for its result. A worker
// receiving and settling many messages at once pays for few transactions,
// not one each. None of these commits waits for an fsync: losing the latest
// of them to a power cut only causes a redelivery.
//
// A caller whose context has ended is refused; once its op is queued it
// waits for the result even if its context ends meanwhile: the transaction
// runs with its own deadline, and a claim answered after its caller left
// would hold its messages locked for nothing.
type combiner struct {
	q       *Queue
	mu      sync.Mutex
	pending []*op
	running bool
	// last is when the latest op arrived.
	last time.Time
}

// When ops arrive close together (a busy worker settling one delivery
// after another, ops less than lingerFor apart), a leader first lets the
// goroutines ready to run go ahead (runtime.Gosched), up to lingerYields
// times, for as long as each turn brings more ops and fewer than
// lingerBatch are queued: a transaction costs far more than one more
// statement in it. It waits on no timer: one shorter than a millisecond
// lasts a millisecond in an idle Go process, and a caller settling its
// messages one after another would wait that long for each. Ops arriving
// farther apart are committed at once.
const (
	lingerFor    = 300 * time.Microsecond
	lingerBatch  = 8
	lingerYields = 8
)

// opTimeout bounds one shared transaction, whatever the callers' contexts:
// it commits for all of them.
const opTimeout = 30 * time.Second

func (c *combiner) do(ctx context.Context, o *op) error {
	if c.q.isClosed() {
		return relay.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	o.done = make(chan struct{})
	now := time.Now()
	c.mu.Lock()
	c.pending = append(c.pending, o)
	busy := now.Sub(c.last) < lingerFor
	c.last = now
	if c.running {
		c.mu.Unlock()
		<-o.done
		return o.err
	}
	c.running = true
	c.mu.Unlock()
	if busy {
		c.linger()
	}
	for {
		c.mu.Lock()
		ops := c.pending
		c.pending = nil
		if len(ops) == 0 {
			c.running = false
			c.mu.Unlock()
			break
		}
		c.mu.Unlock()
		c.q.apply(ops)
	}
	return o.err
}

// linger lets ready goroutines run while that brings more ops, up to
// lingerYields turns or lingerBatch ops queued.
func (c *combiner) linger() {
	n := c.queued()
	for range lingerYields {
		if n >= lingerBatch {
			return
		}
		runtime.Gosched()
		m := c.queued()
		if m == n {
			return
		}
		n = m
	}
}

// queued is how many ops wait for the next transaction.
func (c *combiner) queued() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.pending)
}

// apply runs ops in one transaction and reports each one's result.
func (q *Queue) apply(ops []*op) {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	var b batch
	from := time.Now()
	q.writeMu.Lock()
	var err error
	if q.isClosed() {
		err = relay.ErrClosed
	} else {
		_, err = q.lockedTx(ctx, q.settle, from, func() error {
			// Statements run without a cancellable context: one would cost
			// a cancellation hook per statement, and a transaction is not
			// abandoned half-way anyway (the lock wait honours ctx).
			ctx := context.Background()
			b = batch{}
			now := time.Now()
			for _, o := range ops {
				o.err, o.deadLettered, o.out = nil, false, o.out[:0]
				if o.kind == opClaim {
					continue
				}
				if err := q.settleOne(ctx, o, now.UnixNano(), &b); err != nil {
					return err
				}
			}
			for _, o := range ops {
				if o.kind == opClaim {
					if err := q.claim(ctx, o, now, &b); err != nil {
						return err
					}
				}
			}
			return nil
		})
		if err != nil && b.mutated {
			// The view holds changes the rollback undid: rebuild it.
			q.idx = newIndex(q.cfg.DuplicateWindow)
		}
	}
	q.writeMu.Unlock()
	if err == nil {
		if b.released || b.duplicates > 0 || len(b.expired) > 0 || len(b.invalid) > 0 {
			q.notify()
		}
		q.report(&b) // a rolled-back transaction dropped and dead-lettered nothing
	}
	for _, o := range ops {
		if err != nil {
			o.out = nil
			if o.kind == opClaim {
				o.err = err
			} else {
				o.err = fmt.Errorf("%s message %d: %w", opNames[o.kind], o.m.SequenceNumber, err)
			}
		}
		if o.deadLettered && err == nil {
			q.metrics.deadLetter(relay.ReasonMaxDelivery, 1)
			q.log.Warn("sqlite queue: message dead-lettered: abandoned on its last delivery",
				"message_id", o.m.ID, "sequence_number", o.m.SequenceNumber, "reason", relay.ReasonMaxDelivery,
				"delivery_count", o.m.DeliveryCount, "max_delivery", q.cfg.MaxDeliveryCount)
		}
		close(o.done)
	}
}

// report logs and counts what the queue did on its own in a committed
// transaction.
func (q *Queue) report(b *batch) {
	if len(b.expired) > 0 {
		q.metrics.deadLetter(relay.ReasonMaxDelivery, len(b.expired))
		for _, id := range b.expired {
			q.log.Warn("sqlite queue: message dead-lettered: its lock expired on its last delivery",
				"message_id", id, "reason", relay.ReasonMaxDelivery, "max_delivery", q.cfg.MaxDeliveryCount)
		}
	}
	if len(b.invalid) > 0 {
		q.metrics.deadLetter("InvalidMessage", len(b.invalid))
		for _, id := range b.invalid {
			q.log.Error("sqlite queue: stored message is unreadable; dead-lettered", "message_id", id, "reason", "InvalidMessage")
		}
	}
	q.metrics.duplicate(b.duplicates)
}

// settleOne applies one settlement or renewal if m still holds its lock;
// otherwise it sets o.err to relay.ErrLockLost and writes nothing. A
// database error aborts the whole transaction.
func (q *Queue) settleOne(ctx context.Context, o *op, now int64, b *batch) error {
	m, db := o.m, q.settle
	var res sql.Result
	var err error
	switch o.kind {
	case opRenew:
		res, err = db.exec(ctx, sqlRenew, o.until.UnixNano(), m.SequenceNumber, m.LockToken, now)
	case opComplete:
		res, err = db.exec(ctx, sqlComplete, m.SequenceNumber, m.LockToken, now)
	case opAbandon:
		res, err = db.exec(ctx, sqlRelease, now+o.delay.Nanoseconds(), m.SequenceNumber, m.LockToken, now, q.cfg.MaxDeliveryCount)
	case opRelease:
		res, err = db.exec(ctx, sqlGiveBack, m.SequenceNumber, m.LockToken)
	case opDeadLetter:
		var deliveries int
		err = db.row(ctx, sqlHeld, []any{m.SequenceNumber, m.LockToken, now}, &deliveries)
		if errors.Is(err, sql.ErrNoRows) {
			o.err = lockLost(o)
			return nil
		}
		if err != nil {
			return unavailable("dead-letter", err)
		}
		b.mutated = true // leave records it in the view, and the move may still fail
		if err := q.leave(ctx, m.SequenceNumber, m.ID, m.EnqueuedTime.UnixNano()); err != nil {
			return err
		}
		if err := moveToDeadLetter(ctx, db, m.SequenceNumber, o.reason, o.description, now); err != nil {
			return err
		}
		q.settled(o, b, true)
		return nil
	}
	if err != nil {
		return unavailable(opNames[o.kind], err)
	}
	if n, _ := res.RowsAffected(); n == 1 {
		switch o.kind {
		case opComplete:
			if err := q.leave(ctx, m.SequenceNumber, m.ID, m.EnqueuedTime.UnixNano()); err != nil {
				return err
			}
			q.settled(o, b, true)
		case opAbandon, opRelease:
			q.settled(o, b, false)
		}
		return nil
	}
	if o.kind != opAbandon {
		o.err = lockLost(o)
		return nil
	}
	// Not released: the lock is gone, or this was the last delivery.
	var deliveries int
	err = db.row(ctx, sqlHeld, []any{m.SequenceNumber, m.LockToken, now}, &deliveries)
	if errors.Is(err, sql.ErrNoRows) {
		o.err = lockLost(o)
		return nil
	}
	if err != nil {
		return unavailable("abandon", err)
	}
	o.deadLettered = true
	if err := q.leave(ctx, m.SequenceNumber, m.ID, m.EnqueuedTime.UnixNano()); err != nil {
		return err
	}
	desc := fmt.Sprintf("the message was delivered %d times without being completed (max_delivery=%d)", deliveries, q.cfg.MaxDeliveryCount)
	if err := moveToDeadLetter(ctx, db, m.SequenceNumber, relay.ReasonMaxDelivery, desc, now); err != nil {
		return err
	}
	q.settled(o, b, true)
	return nil
}

// settled updates the view after o released m's session: removed says m
// left the queue.
func (q *Queue) settled(o *op, b *batch, removed bool) {
	q.idx.settled(o.m.SessionID, o.m.SequenceNumber, removed)
	b.mutated, b.released = true, true
}

func lockLost(o *op) error {
	return fmt.Errorf("%s message %d: %w", opNames[o.kind], o.m.SequenceNumber, relay.ErrLockLost)
}
