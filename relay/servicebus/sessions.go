package servicebus

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"

	"github.com/hookbridge/hookbridge/relay"
)

// sessionPool receives from a session-enabled queue: it holds up to
// MaxSessions sessions, each served by a goroutine that receives one
// message, hands it to Receive, and waits until it is settled before
// receiving the next. A session that stays empty for SessionIdle is released
// so other sessions get their turn.
type sessionPool struct {
	q     *Queue
	ready chan *relay.Received

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
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

func (q *Queue) sessionPool() *sessionPool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.pool == nil {
		ctx, cancel := context.WithCancel(context.Background())
		q.pool = &sessionPool{q: q, ready: make(chan *relay.Received), ctx: ctx, cancel: cancel}
		q.pool.wg.Add(1)
		go q.pool.run()
	}
	return q.pool
}

// receive returns at least one message (waiting for it) and at most n.
func (p *sessionPool) receive(ctx context.Context, n int) ([]*relay.Received, error) {
	var out []*relay.Received
	select {
	case r := <-p.ready:
		out = append(out, r)
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-p.ctx.Done():
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

func (p *sessionPool) close() {
	p.cancel()
	p.wg.Wait()
}

// run accepts sessions while there is room.
func (p *sessionPool) run() {
	defer p.wg.Done()
	slots := make(chan struct{}, p.q.cfg.MaxSessions)
	failures := 0
	for {
		select {
		case slots <- struct{}{}:
		case <-p.ctx.Done():
			return
		}
		actx, cancel := context.WithTimeout(p.ctx, 10*time.Second)
		sr, err := p.q.client.AcceptNextSessionForQueue(actx, p.q.cfg.Queue, nil)
		cancel()
		if err != nil {
			<-slots
			if p.ctx.Err() != nil {
				return
			}
			var sbErr *azservicebus.Error
			if errors.As(err, &sbErr) && sbErr.Code == azservicebus.CodeTimeout || errors.Is(err, context.DeadlineExceeded) {
				failures = 0
				continue // no session had messages: ask again
			}
			failures++
			wait := min(time.Duration(failures)*200*time.Millisecond, 5*time.Second)
			p.q.log.Warn("servicebus: cannot accept a session; retrying", "error", err, "retry_in", wait)
			select {
			case <-time.After(wait):
			case <-p.ctx.Done():
				return
			}
			continue
		}
		failures = 0
		p.wg.Add(1)
		sess := &session{sr: sr}
		sess.lockedUntil.Store(sr.LockedUntil().UnixNano())
		go func() {
			defer p.wg.Done()
			defer func() { <-slots }()
			p.serve(sess)
		}()
	}
}

// serve hands out one session's messages, one at a time. The session lock
// covers the message handed out; the consumer renews it through RenewLock
// while it works. If the consumer lets it lapse, the session is released
// (Service Bus hands it, and the unsettled message, to the next receiver).
func (p *sessionPool) serve(s *session) {
	ctx, cancel := context.WithCancel(p.ctx)
	defer cancel()
	defer func() {
		cctx, ccancel := context.WithTimeout(context.Background(), 5*time.Second)
		s.sr.Close(cctx)
		ccancel()
	}()
	for {
		rctx, rcancel := context.WithTimeout(ctx, p.q.cfg.SessionIdle)
		msgs, err := s.sr.ReceiveMessages(rctx, 1, nil)
		rcancel()
		if err != nil || len(msgs) == 0 {
			if err != nil && ctx.Err() == nil && !errors.Is(err, context.DeadlineExceeded) {
				p.q.log.Warn("servicebus: session receive failed; releasing the session", "session", s.sr.SessionID(), "error", err)
			}
			return // idle or broken: release the session
		}
		h := &handle{msg: msgs[0], session: s, done: make(chan struct{})}
		r := received(msgs[0], h)
		r.LockedUntil = s.until()
		select {
		case p.ready <- r:
		case <-ctx.Done():
			return // closing: the lock lapses and the message comes back
		}
		if !p.awaitSettlement(ctx, s, h) {
			return
		}
	}
}

// awaitSettlement waits until h is settled (true), or the session lock
// lapsed or the pool closed (false).
func (p *sessionPool) awaitSettlement(ctx context.Context, s *session, h *handle) bool {
	for {
		t := time.NewTimer(max(time.Until(s.until()), 0) + 100*time.Millisecond)
		select {
		case <-h.done:
			t.Stop()
			return true
		case <-ctx.Done():
			t.Stop()
			return false
		case <-t.C:
			if time.Now().After(s.until()) {
				h.finish() // the lock is gone: a later settlement reports it lost
				return false
			}
		}
	}
}
