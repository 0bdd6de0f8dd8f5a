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

// Complete removes a delivered message from the queue.
func (q *Queue) Complete(ctx context.Context, m *relay.Received) error {
	return q.settlements.do(ctx, &settleOp{m: m, kind: opComplete})
}

// Abandon releases the lock so the message is delivered again, after delay
// if delay > 0; its session stays blocked until then. A message that has
// reached the maximum delivery count is dead-lettered instead.
func (q *Queue) Abandon(ctx context.Context, m *relay.Received, delay time.Duration) error {
	return q.settlements.do(ctx, &settleOp{m: m, kind: opAbandon, delay: max(delay, 0)})
}

// DeadLetter moves a delivered message to the dead-letter queue with a reason
// and description.
func (q *Queue) DeadLetter(ctx context.Context, m *relay.Received, reason, description string) error {
	return q.settlements.do(ctx, &settleOp{m: m, kind: opDeadLetter, reason: reason, description: description})
}

// RenewLock extends m's lock by the lock duration and updates m.LockedUntil.
func (q *Queue) RenewLock(ctx context.Context, m *relay.Received) error {
	op := &settleOp{m: m, kind: opRenew, until: time.Now().Add(q.cfg.LockDuration)}
	if err := q.settlements.do(ctx, op); err != nil {
		return err
	}
	m.LockedUntil = op.until
	return nil
}

type opKind int

const (
	opComplete opKind = iota
	opAbandon
	opDeadLetter
	opRenew
)

var opNames = [...]string{"complete", "abandon", "dead-letter", "renew lock of"}

// settleOp is one settlement or renewal.
type settleOp struct {
	m           *relay.Received
	kind        opKind
	delay       time.Duration
	reason      string
	description string
	until       time.Time

	err          error
	deadLettered bool // abandoned past the maximum delivery count
	done         chan struct{}
}

// combiner runs concurrent settlements in shared transactions: the first
// caller to find none running becomes the leader and commits everything
// queued meanwhile in one transaction, again until the queue is empty; the
// others wait for its result. A worker settling many messages at once pays
// for one transaction, not one each. Settlements are committed without an
// fsync: losing the latest to a power cut only causes a redelivery.
type combiner struct {
	q       *Queue
	mu      sync.Mutex
	pending []*settleOp
	running bool
}

// settleTimeout bounds one shared settlement transaction, whatever the
// callers' contexts: it commits for all of them.
const settleTimeout = 30 * time.Second

func (c *combiner) do(ctx context.Context, op *settleOp) error {
	if c.q.isClosed() {
		return relay.ErrClosed
	}
	op.done = make(chan struct{})
	c.mu.Lock()
	c.pending = append(c.pending, op)
	if c.running {
		c.mu.Unlock()
		select {
		case <-op.done:
			return op.err
		case <-ctx.Done():
			return fmt.Errorf("%s message %d: %w (it may still be settled)", opNames[op.kind], op.m.SequenceNumber, ctx.Err())
		}
	}
	c.running = true
	c.mu.Unlock()
	for {
		c.mu.Lock()
		batch := c.pending
		c.pending = nil
		if len(batch) == 0 {
			c.running = false
			c.mu.Unlock()
			break
		}
		c.mu.Unlock()
		c.q.settleBatch(batch)
	}
	return op.err
}

// settleBatch applies ops in one transaction and reports each one's result.
func (q *Queue) settleBatch(ops []*settleOp) {
	ctx, cancel := context.WithTimeout(context.Background(), settleTimeout)
	defer cancel()
	released := false
	q.writeMu.Lock()
	var err error
	if q.isClosed() {
		err = relay.ErrClosed
	} else {
		_, err = q.lockedTx(ctx, q.settle, func() error {
			now := time.Now().UnixNano()
			for _, op := range ops {
				op.err, op.deadLettered = nil, false
				if err := q.settleOne(ctx, op, now); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err == nil {
		for _, op := range ops {
			if op.err == nil && op.kind != opRenew {
				q.idx.settled(op.m.SessionID, op.m.SequenceNumber, op.kind != opAbandon || op.deadLettered)
				released = true
			}
		}
	}
	q.writeMu.Unlock()
	if released {
		q.notify()
	}
	for _, op := range ops {
		if err != nil {
			op.err = fmt.Errorf("%s message %d: %w", opNames[op.kind], op.m.SequenceNumber, err)
		}
		if op.deadLettered {
			q.metrics.deadLetter(relay.ReasonMaxDelivery, 1)
			q.log.Warn("sqlite queue: message dead-lettered: abandoned on its last delivery",
				"message_id", op.m.ID, "sequence_number", op.m.SequenceNumber, "reason", relay.ReasonMaxDelivery,
				"delivery_count", op.m.DeliveryCount, "max_delivery", q.cfg.MaxDeliveryCount)
		}
		close(op.done)
	}
}

// settleOne applies one op if m still holds its lock; otherwise it sets
// op.err to relay.ErrLockLost and writes nothing. A database error aborts
// the whole transaction.
func (q *Queue) settleOne(ctx context.Context, op *settleOp, now int64) error {
	m, db := op.m, q.settle
	if op.kind == opRenew {
		res, err := db.exec(ctx, sqlRenew, op.until.UnixNano(), m.SequenceNumber, m.LockToken, now)
		if err != nil {
			return unavailable("renew lock", err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			op.err = lockLost(op)
		}
		return nil
	}
	var deliveries int
	err := db.row(ctx, sqlHeld, []any{m.SequenceNumber, m.LockToken, now}, &deliveries)
	if errors.Is(err, sql.ErrNoRows) {
		op.err = lockLost(op)
		return nil
	}
	if err != nil {
		return unavailable(opNames[op.kind], err)
	}
	switch op.kind {
	case opComplete:
		return remove(ctx, db, m.SequenceNumber)
	case opDeadLetter:
		return moveToDeadLetter(ctx, db, m.SequenceNumber, op.reason, op.description, now)
	default: // opAbandon
		if deliveries >= q.cfg.MaxDeliveryCount {
			op.deadLettered = true
			desc := fmt.Sprintf("the message was delivered %d times without being completed (max_delivery=%d)", deliveries, q.cfg.MaxDeliveryCount)
			return moveToDeadLetter(ctx, db, m.SequenceNumber, relay.ReasonMaxDelivery, desc, now)
		}
		if _, err := db.exec(ctx, sqlAbandon, now+op.delay.Nanoseconds(), m.SequenceNumber); err != nil {
			return unavailable("abandon", err)
		}
		return nil
	}
}

func lockLost(op *settleOp) error {
	return fmt.Errorf("%s message %d: %w", opNames[op.kind], op.m.SequenceNumber, relay.ErrLockLost)
}
