package sqlite

import (
	"context"
	"database/sql"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/hookbridge/hookbridge/relay"
)

// Receive waits until at least one message is available (or ctx ends, or
// the queue closes) and returns up to n messages, each locked for the
// queue's lock duration. Messages delivered the maximum number of times are
// moved to the dead-letter queue instead, and duplicates within the window
// are dropped.
//
// A receive claims up to Config.Prefetch messages at once and keeps those
// beyond n, locked, for the next calls: a worker that asks for one message
// per free slot then pays for one claim transaction per several messages.
// A kept message is handed out only while most of its lock is left (it is
// given back otherwise), and Close gives back what is kept.
func (q *Queue) Receive(ctx context.Context, n int) ([]*relay.Received, error) {
	if n <= 0 {
		n = 1
	}
	q.receivingOnce.Do(func() { close(q.receiving) })
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if msgs := q.prefetched.take(q, n); len(msgs) > 0 {
			return msgs, nil
		}
		woken := q.wake.wait()
		op := &op{kind: opClaim, n: max(n, q.cfg.Prefetch)}
		if err := q.claimFor(ctx, op, n); err != nil || len(op.out) > 0 {
			return op.out, err
		}
		// Nothing ready: sleep until another send or settlement, the next
		// lock expiry or delay, or a safety poll for missed wake-ups.
		watching := q.watching.Load()
		wait := time.Second
		if !watching {
			wait = 50 * time.Millisecond
		}
		if !op.due.IsZero() {
			if d := time.Until(op.due); d < wait {
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

// claimFor runs op, a claim for a receive of n, and keeps what it claimed
// beyond n. Close waits for the claims in progress, so that it gives back
// everything kept.
func (q *Queue) claimFor(ctx context.Context, op *op, n int) error {
	p := &q.prefetched
	p.claims.RLock()
	defer p.claims.RUnlock()
	if p.isClosed() {
		return relay.ErrClosed
	}
	err := q.ops.do(ctx, op)
	if len(op.out) > n {
		p.keep(op.out[n:])
		op.out = op.out[:n]
	}
	return err
}

// prefetched holds messages a receive claimed beyond what its caller asked
// for.
type prefetched struct {
	// claims is held shared by each claim in progress (see Queue.claimFor),
	// and exclusively by drain.
	claims sync.RWMutex
	mu     sync.Mutex
	msgs   []*relay.Received
	closed bool // drained: no more claims
}

func (p *prefetched) isClosed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closed
}

func (p *prefetched) keep(msgs []*relay.Received) {
	p.mu.Lock()
	p.msgs = append(p.msgs, msgs...)
	p.mu.Unlock()
}

// take hands out up to n kept messages with at least half their lock left,
// oldest first, and gives back those with less.
func (p *prefetched) take(q *Queue, n int) []*relay.Received {
	p.mu.Lock()
	if len(p.msgs) == 0 {
		p.mu.Unlock()
		return nil
	}
	var out, stale []*relay.Received
	i := 0
	for ; i < len(p.msgs) && len(out) < n; i++ {
		if m := p.msgs[i]; time.Until(m.LockedUntil) >= q.cfg.LockDuration/2 {
			out = append(out, m)
		} else {
			stale = append(stale, m)
		}
	}
	p.msgs = append(p.msgs[:0], p.msgs[i:]...)
	p.mu.Unlock()
	if len(stale) > 0 {
		q.release(stale)
	}
	return out
}

// drain waits for the claims in progress, stops further ones, and takes
// every kept message.
func (p *prefetched) drain() []*relay.Received {
	p.claims.Lock()
	defer p.claims.Unlock()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	out := p.msgs
	p.msgs = nil
	return out
}

// release gives claimed messages back unseen: unlocked, their delivery not
// counted. A failure only leaves them locked until their locks expire.
func (q *Queue) release(msgs []*relay.Received) {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	for _, m := range msgs {
		if err := q.ops.do(ctx, &op{kind: opRelease, m: m}); err != nil && !errors.Is(err, relay.ErrClosed) {
			q.log.Warn("sqlite queue: could not give back a prefetched message; it is delivered again when its lock expires",
				"message_id", m.ID, "sequence_number", m.SequenceNumber, "error", err)
		}
	}
}

// pruneEvery is how often receivers forget duplicate-window entries that
// can no longer match.
const pruneEvery = 10 * time.Second

// claim hands out up to op.n deliverable messages: the head of each session,
// in order of their sequence numbers. With none deliverable it sets op.due
// to when the earliest parked session may be due (zero if none). It runs in
// the shared transaction; b collects what to report after the commit.
func (q *Queue) claim(ctx context.Context, op *op, now time.Time, b *batch) error {
	x, db := q.idx, q.settle
	window := int64(0)
	if q.cfg.DuplicateWindow > 0 {
		window = q.cfg.DuplicateWindow.Nanoseconds()
	}
	if !b.refreshed {
		b.refreshed = true
		dropped, err := x.refresh(ctx, db, window, func(seq int64) (bool, error) {
			res, err := db.exec(ctx, sqlRemoveUnclaimed, seq)
			if err != nil {
				return false, err
			}
			n, err := res.RowsAffected()
			return n > 0, err
		})
		b.duplicates += dropped
		if dropped > 0 || err != nil {
			// A rollback brings the dropped rows back, and a scan cut short
			// may have taken in part of its rows: either way the view must
			// be rebuilt if the transaction does not commit.
			b.mutated = true
		}
		if err != nil {
			return unavailable("receive", err)
		}
		if window > 0 && now.Sub(x.lastPrune) > pruneEvery {
			x.lastPrune = now
			if cutoff, err := q.windowCutoff(ctx, db, now.UnixNano()); err == nil {
				x.prune(cutoff)
			}
		}
	}
	nowNS := now.UnixNano()
	x.outside = q.outside.Load()
	x.wake(nowNS)
	lockedUntil := now.Add(q.cfg.LockDuration)
	for len(op.out) < op.n {
		s := x.next()
		if s == nil {
			break
		}
		for len(s.seqs) > 0 {
			seq := s.seqs[0]
			token := newLockToken()
			var h head
			err := db.row(ctx, sqlClaim, []any{lockedUntil.UnixNano(), token, seq, nowNS, q.cfg.MaxDeliveryCount},
				&h.id, &h.session, &h.enq, &h.data, &h.deliveries)
			if errors.Is(err, sql.ErrNoRows) {
				parked, err := q.unclaimable(ctx, x, s, seq, nowNS, b)
				if err != nil {
					return err
				}
				if parked {
					break
				}
				continue
			}
			if err != nil {
				return unavailable("receive", err)
			}
			b.mutated = true
			r, err := h.received(seq)
			if err != nil {
				// Not a message this queue wrote: nothing can deliver it.
				if err := moveToDeadLetter(ctx, db, seq, "InvalidMessage", err.Error(), nowNS); err != nil {
					return err
				}
				b.invalid = append(b.invalid, h.id)
				x.pop(s)
				continue
			}
			r.DeliveryCount = h.deliveries
			r.MaxDeliveryCount = q.cfg.MaxDeliveryCount
			r.LockedUntil = lockedUntil
			r.LockToken = token
			x.held[seq] = true
			x.park(s, lockedUntil.UnixNano(), false)
			op.out = append(op.out, r)
			break
		}
		x.done(s)
	}
	op.due = x.due()
	return nil
}

// unclaimable handles a session head that could not be claimed: gone (the
// session moves on), locked or delayed (the session is parked: parked is
// true), or past the maximum delivery count, its last lock having expired
// (dead-lettered; the session moves on).
func (q *Queue) unclaimable(ctx context.Context, x *index, s *session, seq, now int64, b *batch) (parked bool, err error) {
	var lockedUntil, visibleAt, enq int64
	var deliveries int
	var id string
	err = q.settle.row(ctx, sqlState, []any{seq}, &lockedUntil, &visibleAt, &deliveries, &id, &enq)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		x.pop(s) // settled or dead-lettered by another process
		return false, nil
	case err != nil:
		return false, unavailable("receive", err)
	case lockedUntil > now:
		x.park(s, lockedUntil, !x.held[seq])
		return true, nil
	case visibleAt > now:
		x.park(s, visibleAt, false)
		return true, nil
	}
	b.mutated = true
	desc := fmt.Sprintf("the message was delivered %d times without being completed; its last lock expired (max_delivery=%d)", deliveries, q.cfg.MaxDeliveryCount)
	if err := q.leave(ctx, seq, id, enq); err != nil {
		return false, err
	}
	if err := moveToDeadLetter(ctx, q.settle, seq, relay.ReasonMaxDelivery, desc, now); err != nil {
		return false, err
	}
	b.expired = append(b.expired, id)
	x.pop(s)
	return false, nil
}

// leave records in the duplicate window that message seq is leaving the
// queue (completed or dead-lettered).
func (q *Queue) leave(ctx context.Context, seq int64, id string, enq int64) error {
	if q.cfg.DuplicateWindow <= 0 {
		return nil
	}
	expires := enq + q.cfg.DuplicateWindow.Nanoseconds()
	if _, err := q.settle.exec(ctx, sqlDedupAppend, id, expires); err != nil {
		return unavailable("record duplicate window", err)
	}
	q.idx.left(id, seq, expires)
	return nil
}

// newLockToken returns a token unique enough to tell one delivery of a
// message from the next.
func newLockToken() string {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], rand.Uint64())
	return hex.EncodeToString(b[:])
}

// head is a session's first message as the claim read it.
type head struct {
	id, session string
	enq         int64
	data        []byte
	deliveries  int
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
// match: now less pruneSlack and busy_timeout, or the enqueue time of the
// first message this process has not scanned (a duplicate sent within the
// window but scanned after it is still a duplicate), whichever is earlier.
// A message is checked when a receiver's scan first reaches it, so once a
// process has scanned every waiting message the window's length alone
// bounds it, whatever waits behind a session's head. It runs under writeMu,
// which guards the index. An error means nothing may be pruned.
func (q *Queue) windowCutoff(ctx context.Context, c *conn, now int64) (int64, error) {
	cutoff := now - int64(pruneSlack+q.cfg.BusyTimeout)
	var first int64
	err := c.row(ctx, `SELECT enqueued_at FROM queue WHERE seq > ? ORDER BY seq LIMIT 1`, []any{q.idx.lastSeq}, &first)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return cutoff, nil
	case err != nil:
		return 0, err
	}
	return min(cutoff, first), nil
}

// pruneSlack, with busy_timeout, keeps the duplicate window's entries a
// while past the end of their window: a send stamps its messages before it
// waits for the write lock (up to busy_timeout), so a message can be
// committed after a receiver saw an empty queue, with an enqueue time
// before that receiver's now.
const pruneSlack = time.Minute
