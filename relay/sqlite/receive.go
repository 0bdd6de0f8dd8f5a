package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/hookbridge/hookbridge/relay"
)

// Receive waits until at least one message is available (or ctx ends, or
// the queue closes) and returns up to n messages, each locked for the
// queue's lock duration. Messages delivered the maximum number of times are
// moved to the dead-letter queue instead, and duplicates within the window
// are dropped.
func (q *Queue) Receive(ctx context.Context, n int) ([]*relay.Received, error) {
	if n <= 0 {
		n = 1
	}
	q.receivingOnce.Do(func() { close(q.receiving) })
	for {
		woken := q.wake.wait()
		msgs, due, err := q.claim(ctx, n)
		if err != nil || len(msgs) > 0 {
			return msgs, err
		}
		// Nothing ready: sleep until another send or settlement, the next
		// lock expiry or delay, or a safety poll for missed wake-ups.
		watching := q.watching.Load()
		wait := time.Second
		if !watching {
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
			if !watching {
				q.outside.Add(1) // other processes may have committed unseen
			}
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

// claimed is what a claim did besides handing out messages, for the log
// after its commit.
type claimed struct {
	out          []*relay.Received
	deadLettered []string // MessageIDs moved to the dead-letter queue
	duplicates   int
	// mutated says the index was changed in ways only the commit makes
	// true (a message removed, locked or recorded in the window).
	mutated bool
}

// claim locks up to n deliverable messages: the head of each session, in
// order of their sequence numbers. With none deliverable it returns when
// the earliest parked session may be due (zero if none).
func (q *Queue) claim(ctx context.Context, n int) ([]*relay.Received, time.Time, error) {
	var c claimed
	var due time.Time
	q.writeMu.Lock()
	if q.isClosed() {
		q.writeMu.Unlock()
		return nil, time.Time{}, relay.ErrClosed
	}
	_, err := q.lockedTx(ctx, q.settle, func() error {
		c = claimed{}
		return q.claimTx(ctx, n, &c)
	})
	if err != nil && c.mutated {
		// The view holds changes the rollback undid: rebuild it.
		q.idx = newIndex()
	} else if err == nil {
		due = q.idx.due()
	}
	q.writeMu.Unlock()
	if err != nil {
		return nil, time.Time{}, err
	}
	if len(c.deadLettered) > 0 {
		q.metrics.deadLetter(relay.ReasonMaxDelivery, len(c.deadLettered))
		for _, id := range c.deadLettered {
			q.log.Warn("sqlite queue: message dead-lettered: its lock expired on its last delivery",
				"message_id", id, "reason", relay.ReasonMaxDelivery, "max_delivery", q.cfg.MaxDeliveryCount)
		}
	}
	if c.duplicates > 0 {
		q.metrics.duplicate(c.duplicates)
	}
	if len(c.deadLettered) > 0 || c.duplicates > 0 {
		q.notify()
	}
	return c.out, due, nil
}

// pruneEvery is how often receivers forget duplicate-window entries that
// can no longer match.
const pruneEvery = 10 * time.Second

func (q *Queue) claimTx(ctx context.Context, n int, c *claimed) error {
	db := q.settle
	x := q.idx
	dedup := q.cfg.DuplicateWindow > 0
	if err := x.refresh(ctx, db, dedup); err != nil {
		return unavailable("receive", err)
	}
	now := time.Now()
	nowNS := now.UnixNano()
	if dedup && now.Sub(x.lastPrune) > pruneEvery {
		x.lastPrune = now
		x.prune(q.windowCutoff(ctx, db, nowNS))
	}
	x.outside = q.outside.Load()
	x.wake(nowNS)
	lockedUntil := now.Add(q.cfg.LockDuration)
	for len(c.out) < n {
		s := x.next()
		if s == nil {
			break
		}
		for len(s.seqs) > 0 {
			seq := s.seqs[0]
			var h head
			err := db.row(ctx, sqlHead, []any{seq}, &h.id, &h.session, &h.enq, &h.data, &h.deliveries, &h.lockedUntil, &h.visibleAt)
			if errors.Is(err, sql.ErrNoRows) {
				x.pop(s) // settled or dead-lettered by another process
				continue
			}
			if err != nil {
				return unavailable("receive", err)
			}
			if h.lockedUntil > nowNS {
				x.park(s, h.lockedUntil, !x.held[seq])
				break
			}
			if h.visibleAt > nowNS {
				x.park(s, h.visibleAt, false)
				break
			}
			if h.deliveries >= q.cfg.MaxDeliveryCount {
				// The last delivery's lock expired unsettled.
				desc := fmt.Sprintf("the message was delivered %d times without being completed; its last lock expired (max_delivery=%d)", h.deliveries, q.cfg.MaxDeliveryCount)
				if err := moveToDeadLetter(ctx, db, seq, relay.ReasonMaxDelivery, desc, nowNS); err != nil {
					return err
				}
				c.deadLettered = append(c.deadLettered, h.id)
				c.mutated = true
				x.pop(s)
				continue
			}
			first := h.deliveries <= 0
			if first && dedup {
				if x.duplicate(h.id, seq, h.enq) {
					if err := remove(ctx, db, seq); err != nil {
						return err
					}
					c.duplicates++
					c.mutated = true
					x.pop(s)
					continue
				}
				expires := h.enq + q.cfg.DuplicateWindow.Nanoseconds()
				if _, err := db.exec(ctx, sqlDedupAppend, h.id, seq, expires); err != nil {
					return unavailable("receive", err)
				}
				x.seen[h.id] = seenID{seq: seq, expires: expires}
				c.mutated = true
			}
			r, err := h.received(seq)
			if err != nil {
				// Not a message this queue wrote: nothing can deliver it.
				if err := moveToDeadLetter(ctx, db, seq, "InvalidMessage", err.Error(), nowNS); err != nil {
					return err
				}
				q.log.Error("sqlite queue: stored message is unreadable; dead-lettered", "message_id", h.id, "sequence_number", seq, "error", err)
				c.mutated = true
				x.pop(s)
				continue
			}
			r.DeliveryCount = max(h.deliveries, 0) + 1
			r.MaxDeliveryCount = q.cfg.MaxDeliveryCount
			r.LockedUntil = lockedUntil
			r.LockToken = uuid.NewString()
			if _, err := db.exec(ctx, sqlLock, seq, r.DeliveryCount, lockedUntil.UnixNano(), r.LockToken); err != nil {
				return unavailable("lock", err)
			}
			x.held[seq] = true
			c.mutated = true
			x.park(s, lockedUntil.UnixNano(), false)
			c.out = append(c.out, r)
			break
		}
		x.done(s)
	}
	return nil
}

// head is a session's first message as the database has it.
type head struct {
	id, session            string
	enq                    int64
	data                   []byte
	deliveries             int
	lockedUntil, visibleAt int64
}

func (h *head) received(seq int64) (*relay.Received, error) {
	subject, ct, props, body, err := decodeData(h.data)
	if err != nil {
		return nil, err
	}
	return &relay.Received{
		Message: relay.Message{
			ID: h.id, SessionID: h.session, Subject: subject, ContentType: ct, Body: body, Properties: props,
		},
		SequenceNumber: seq,
		EnqueuedTime:   time.Unix(0, h.enq),
	}, nil
}

// windowCutoff is the time before which no duplicate-window entry can still
// match: now, or the enqueue time of the oldest message waiting, whichever
// is earlier (a duplicate sent within the window but delivered after it is
// still a duplicate).
func (q *Queue) windowCutoff(ctx context.Context, c *conn, now int64) int64 {
	var oldest int64
	if err := c.row(ctx, `SELECT enqueued_at FROM queue ORDER BY seq LIMIT 1`, nil, &oldest); err != nil {
		return now
	}
	return min(now, oldest)
}

// remove deletes a message and its delivery state.
func remove(ctx context.Context, c *conn, seq int64) error {
	if _, err := c.exec(ctx, sqlDelete, seq); err != nil {
		return unavailable("remove", err)
	}
	if _, err := c.exec(ctx, sqlDeleteState, seq); err != nil {
		return unavailable("remove", err)
	}
	return nil
}
