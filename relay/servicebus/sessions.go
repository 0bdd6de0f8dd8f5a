package servicebus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"

	"github.com/hookbridge/hookbridge/relay"
)

// sessionPool receives from a session-enabled queue while Run runs: it
// holds up to MaxSessions sessions, each served by a goroutine that receives
// one message, hands it to Receive, and waits until it is settled before
// receiving the next. A session that stays empty for SessionIdle is released
// so other sessions get their turn.
//
// A session is never released with a message of it locked by this pool,
// because Service Bus gives the session's next holder the messages that
// are not locked: a message left locked would come after its successors.
// So a message received but not handed out when the pool stops is
// abandoned first, and a message handed out is waited for until it is
// settled (the worker settles everything it holds when it stops) or the
// session lock lapses.
type sessionPool struct {
	q     *Queue
	ready chan *relay.Received // unbuffered: a message is handed out or given back
}

type session struct {
	sr *azservicebus.SessionReceiver
	// lockedUntil mirrors sr.LockedUntil(), which is not safe to read while
	// another goroutine renews; set by whoever renews (unix nanoseconds).
	lockedUntil atomic.Int64
}

func (s *session) until() time.Time { return time.Unix(0, s.lockedUntil.Load()) }

// renew renews the session lock and records the new expiry.
func (s *session) renew(ctx context.Context) error {
	if err := s.sr.RenewSessionLock(ctx, nil); err != nil {
		return err
	}
	s.lockedUntil.Store(s.sr.LockedUntil().UnixNano())
	return nil
}

// receive returns at least one message (waiting for it) and at most n.
func (p *sessionPool) receive(ctx context.Context, n int) ([]*relay.Received, error) {
	var out []*relay.Received
	select {
	case r := <-p.ready:
		out = append(out, r)
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-p.q.stopped.Done():
		return nil, relay.ErrClosed
	}
	for len(out) < n {
		select {
		case r := <-p.ready:
			out = append(out, r)
		default:
			return out, nil
		}
	}
	return out, nil
}

// acceptWait bounds one AcceptNextSession call: when no session has
// messages, Service Bus answers with a timeout and the pool asks again.
const acceptWait = 10 * time.Second

// run accepts sessions while there is room, until stopped ends; it returns
// once every session it accepted was released.
func (p *sessionPool) run(stopped context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	slots := make(chan struct{}, p.q.cfg.MaxSessions)
	failures := 0
	for {
		select {
		case slots <- struct{}{}:
		case <-stopped.Done():
			return
		}
		actx, cancel := context.WithTimeout(stopped, acceptWait)
		sr, err := p.q.client.AcceptNextSessionForQueue(actx, p.q.cfg.Queue, nil)
		cancel()
		if err != nil {
			<-slots
			if stopped.Err() != nil {
				return
			}
			var sbErr *azservicebus.Error
			if errors.As(err, &sbErr) && sbErr.Code == azservicebus.CodeTimeout || errors.Is(err, context.DeadlineExceeded) {
				failures = 0
				p.q.accepts.ok()
				continue // no session had messages: ask again
			}
			failures++
			p.q.accepts.fail(mapErr("accept session", err))
			wait := relay.Backoff(failures, 200*time.Millisecond, 5*time.Second)
			p.q.log.Warn("servicebus: cannot accept a session; retrying", "error", err, "retry_in", wait)
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-stopped.Done():
				t.Stop()
				return
			}
			continue
		}
		failures = 0
		p.q.accepts.ok()
		s := &session{sr: sr}
		s.lockedUntil.Store(sr.LockedUntil().UnixNano())
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			p.serve(stopped, s)
		}()
	}
}

// serve hands out one session's messages, one at a time, until the session
// is idle, broken or lapsed, or the pool stops. The session lock covers the
// message handed out; the consumer renews it through RenewLock while it
// works.
func (p *sessionPool) serve(stopped context.Context, s *session) {
	log := p.q.log.With("session", s.sr.SessionID())
	var current *handle
	defer func() {
		if current != nil {
			current.finish() // a settlement after the release reports the lock lost
		}
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.sr.Close(cctx); err != nil {
			log.Debug("servicebus: closing a session receiver failed; its lock lapses on its own", "error", err)
		}
	}()
	for stopped.Err() == nil {
		// One message at a time: the receive's credit is used up by the
		// message it returns, so nothing else of the session is locked
		// into this link while that message is out.
		rctx, cancel := context.WithTimeout(stopped, p.q.cfg.SessionIdle)
		msgs, err := s.sr.ReceiveMessages(rctx, 1, nil)
		cancel()
		if err != nil || len(msgs) == 0 {
			switch {
			case stopped.Err() != nil:
				p.catchInFlight(stopped, log, s)
			case err != nil && !errors.Is(err, context.DeadlineExceeded):
				log.Warn("servicebus: session receive failed; releasing the session", "error", err)
			}
			return // idle, broken or stopping: release the session
		}
		sm := msgs[0]
		current = newHandle(sm, nil, s)
		if reason, desc, ok := deadLetterMark(sm); ok {
			p.q.deadLetterOnArrival(stopped, current, sm, reason, desc)
			if !p.awaitSettlement(s, current) {
				return
			}
			current = nil
			continue
		}
		r := received(sm, current, p.q.cfg.MaxDeliveryCount)
		if !p.handOut(stopped, log, s, current, r) {
			return
		}
		if !p.awaitSettlement(s, current) {
			return
		}
		current = nil
	}
}

// handOut waits for a consumer to take r, renewing the session lock
// whenever half of what is left of it has passed, so that a message that
// waits for a free worker longer than the lock duration is still locked
// when it is handed out. It reports false when the session must be let go:
// the pool stopped (r is given back) or the renewal failed (the lock is
// lost; the message is delivered again to the session's next holder).
func (p *sessionPool) handOut(stopped context.Context, log *slog.Logger, s *session, h *handle, r *relay.Received) bool {
	for {
		r.LockedUntil = s.until()
		t := time.NewTimer(time.Until(r.LockedUntil) / 2)
		select {
		case p.ready <- r:
			t.Stop()
			return true
		case <-stopped.Done():
			t.Stop()
			p.giveBack(stopped, log, h, r.SequenceNumber, r.ID)
			return false
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(stopped, settleTimeout)
		err := s.renew(ctx)
		cancel()
		if err != nil {
			if stopped.Err() != nil {
				p.giveBack(stopped, log, h, r.SequenceNumber, r.ID)
			} else {
				log.Warn("servicebus: renewing the lock of a session whose message waits for a worker failed; releasing the session", "message_id", r.ID, "error", err)
			}
			return false
		}
	}
}

// giveBack abandons a message the pool received but did not hand out, so
// it is the first the session's next holder gets. It runs as the pool
// stops, so only ctx's values count: the abandon has a deadline of its own.
//
// A message received on the last delivery the queue allows would be
// dead-lettered by Service Bus on that abandon, where nobody sees it; it is
// dead-lettered here instead, saying why, counted and logged.
func (p *sessionPool) giveBack(ctx context.Context, log *slog.Logger, h *handle, seq int64, id string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
	defer cancel()
	if maxN := p.q.cfg.MaxDeliveryCount; h.msg != nil && int(h.msg.DeliveryCount) >= maxN {
		desc := fmt.Sprintf("delivery %d of %d was received but never handed to a worker: the worker stopped first, and giving it back would have dead-lettered it unseen; replay it", h.msg.DeliveryCount, maxN)
		err := h.settle(ctx, seq, "dead-letter", deadLetterFn(relay.ReasonMaxDelivery, desc))
		if err == nil {
			p.q.metrics.deadLetteredUnsent.WithLabelValues(relay.ReasonMaxDelivery).Inc()
			log.Error("servicebus: dead-lettered a message received on its last allowed delivery that the stopping worker never got",
				"message_id", id, "event_id", eventID(h.msg), "reason", relay.ReasonMaxDelivery, "delivery_count", h.msg.DeliveryCount)
			return
		}
		log.Error("servicebus: could not dead-letter a message received on its last allowed delivery; Service Bus dead-letters it when its lock lapses",
			"message_id", id, "event_id", eventID(h.msg), "error", err)
		return
	}
	if err := h.settle(ctx, seq, "abandon", abandonFn); err != nil {
		log.Warn("servicebus: could not give back a received message on stopping; it is delivered again when its lock lapses",
			"message_id", id, "error", err)
	}
}

// inFlightGrace is how long a stopping session waits for a message already
// on its way to it.
const inFlightGrace = 250 * time.Millisecond

// catchInFlight gives back the message a receive cancelled by the stop may
// still draw: the SDK leaves the receive's credit open, so the session's
// next message can be on the wire, and one that arrives as the receiver
// closes stays locked for the lock duration (the session's next holder
// would get the call's later events first). A receive on that same credit
// catches it; if the SDK released it meanwhile, the receive takes it again.
// Either way the credit is used up, or nothing came within the grace.
func (p *sessionPool) catchInFlight(ctx context.Context, log *slog.Logger, s *session) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), inFlightGrace)
	msgs, _ := s.sr.ReceiveMessages(rctx, 1, nil)
	cancel()
	for _, sm := range msgs {
		p.giveBack(ctx, log, newHandle(sm, nil, s), valueOr(sm.SequenceNumber, 0), sm.MessageID)
	}
}

// awaitSettlement waits until h is settled (true), or the session lock
// lapsed or the queue closed (false). Run's context ending does not end the
// wait: the consumer is settling what it holds.
func (p *sessionPool) awaitSettlement(s *session, h *handle) bool {
	for {
		t := time.NewTimer(max(time.Until(s.until()), 0) + 100*time.Millisecond)
		select {
		case <-h.done:
			t.Stop()
			return true
		case <-p.q.closed.Done():
			t.Stop()
			return false
		case <-t.C:
			if time.Now().After(s.until()) {
				return false // the lock is gone: a later settlement reports it lost
			}
		}
	}
}
