package spool

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/hookbridge/hookbridge/relay"
)

// settleTimeout bounds a settlement of the store; settlements run even
// after Run's context ended, so that a stopping forwarder leaves nothing
// locked.
const settleTimeout = 5 * time.Second

// Run forwards the spool to the primary until ctx ends, then returns nil
// (having released what it held). It first reads what the store holds: a
// previous run's messages, whose sessions are unknown until read, so every
// session's messages go through the spool until those are forwarded. It
// returns an error only when it cannot go on: the store or the primary was
// closed, or it was already called.
func (s *Spool) Run(ctx context.Context) error {
	s.mu.Lock()
	if s.started {
		s.mu.Unlock()
		return errors.New("spool: Run called twice")
	}
	s.started, s.running = true, true
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.running = false
		s.mu.Unlock()
	}()
	if err := s.load(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	failures := 0
	size := sizer{max: s.cfg.ForwardBatch, n: s.cfg.ForwardBatch}
	for ctx.Err() == nil {
		rctx, cancel := context.WithTimeout(ctx, s.cfg.Poll)
		asked := time.Now()
		msgs, err := s.store.Receive(rctx, size.n)
		received := time.Now()
		cancel()
		switch {
		case ctx.Err() != nil:
			s.release(ctx, msgs)
			return nil
		case err == nil:
			failures = 0
			size.observe(len(msgs), received.Sub(asked), received)
			if err := s.forward(ctx, msgs, received, &size); err != nil {
				return err
			}
		case errors.Is(err, context.DeadlineExceeded):
			s.idle(ctx)
		case errors.Is(err, relay.ErrClosed):
			return fmt.Errorf("spool: the spool's store was closed while forwarding: %w", err)
		default:
			failures++
			s.log.Warn("spool: cannot read the spool; retrying", "error", err)
			if !sleep(ctx, s.retryWait(failures)) {
				return nil
			}
		}
	}
	return nil
}

// sizer picks how many messages the forwarder asks the store for. A store
// that hands out one message per session may look through every message it
// holds to find the n-th session ready (the SQLite queue does): asking for
// more sessions than are ready, or for sessions far back, costs a scan of
// the whole spool each round, and draining a large spool of few calls
// becomes quadratic. So the forwarder asks for as many as the last round
// found, halves when finding them was slow, and asks for more only once
// 20 times the last costly round has passed (at most a second), keeping
// such scans to a small share of its time.
type sizer struct {
	max, n  int
	probeAt time.Time
}

// slowReceive is a Receive that found what it was asked for, slowly: the
// store had to look far back.
const slowReceive = 50 * time.Millisecond

// sizerHoldAfterTimeout is how long the forwarder keeps to a batch size
// that a send timing out made it halve to, before it tries a larger one.
const sizerHoldAfterTimeout = 10 * time.Second

// observe adjusts n after a Receive of n messages returned got after took.
func (z *sizer) observe(got int, took time.Duration, now time.Time) {
	backoff := now.Add(min(20*took, time.Second))
	switch {
	case got < z.n: // it looked at everything (or waited for the first)
		z.n, z.probeAt = max(got, 1), backoff
	case took > slowReceive && z.n > 1:
		z.n, z.probeAt = max(z.n/2, 1), backoff
	case !now.Before(z.probeAt):
		z.n = min(2*z.n, z.max)
	}
}

// load reads how many messages the store holds, retrying until it answers,
// and then lets SendBatch route.
func (s *Spool) load(ctx context.Context) error {
	for attempt := 1; ; attempt++ {
		active, dead, err := s.store.Counts(ctx)
		if err == nil {
			s.mu.Lock()
			s.depth = active
			if active > 0 {
				s.recovering, s.oldLeft, s.newIDs = true, active, map[string]struct{}{}
				s.spooling, s.spoolingSince = true, time.Now()
			}
			s.mu.Unlock()
			close(s.known)
			if active > 0 {
				s.log.Warn("spool: forwarding events left by an earlier run; until they are forwarded every call's events go through the spool, in order",
					"messages", active)
			}
			if dead > 0 {
				s.log.Warn("spool: the spool's dead-letter queue holds events Service Bus refused as too large; inspect them with hookbridge dlq list on the spool's URL",
					"messages", dead)
			}
			return nil
		}
		if errors.Is(err, relay.ErrClosed) {
			return fmt.Errorf("spool: the spool's store is closed: %w", err)
		}
		s.log.Warn("spool: cannot count the spool's messages; retrying", "error", err)
		if !sleep(ctx, s.retryWait(attempt)) {
			return ctx.Err()
		}
	}
}

// forward sends held (received at received) to the primary, retrying with
// backoff and keeping their locks, until they are sent and completed, set
// aside, or ctx ends. The store hands out at most one message per session
// at a time, so held never has two of one session: their order against
// each other does not matter, and the next of each session comes only
// after this one is completed, that is, after the primary has it.
//
// A send that runs out of Config.SendTimeout is retried with half the
// messages (the others go back to the store, for later rounds), and size
// asks the store for no more than that for a while: Service Bus taking
// events slowly (large events, a slow link, throttling) must slow the
// drain, not stop it.
func (s *Spool) forward(ctx context.Context, held []*relay.Received, received time.Time, size *sizer) error {
	s.noteOldest(held)
	lockSpan := held[0].LockedUntil.Sub(received)
	for attempt := 1; ; attempt++ {
		msgs := make([]relay.Message, len(held))
		for i, m := range held {
			msgs[i] = fromStore(m.Message)
		}
		sctx, cancel := context.WithTimeout(ctx, s.cfg.SendTimeout)
		err := s.primary.SendBatch(sctx, msgs)
		timedOut := errors.Is(sctx.Err(), context.DeadlineExceeded)
		var notSent *relay.NotSentError
		cancel()
		switch {
		case err == nil:
			s.primaryOK()
			s.completed(ctx, held)
			return nil
		case ctx.Err() != nil:
			s.release(ctx, held)
			return nil
		case errors.Is(err, relay.ErrClosed):
			s.release(ctx, held)
			return fmt.Errorf("spool: Service Bus was closed while forwarding: %w", err)
		case errors.As(err, &notSent) && errors.Is(err, relay.ErrMessageTooLarge):
			// Service Bus took the others and named the ones it refuses:
			// set those aside and complete the rest, sending nothing twice.
			s.primaryOK()
			var sent []*relay.Received
			for _, m := range held {
				if slices.Contains(notSent.IDs, m.ID) {
					s.setAside(ctx, m, err)
				} else {
					sent = append(sent, m)
				}
			}
			s.completed(ctx, sent)
			return nil
		case errors.Is(err, relay.ErrMessageTooLarge):
			s.primaryOK() // it answered
			if held = s.oneByOne(ctx, held); len(held) == 0 {
				return nil
			}
		default:
			s.metrics.forwardFailures.Inc()
			s.primaryFailed(err)
			if attempt == 1 || attempt%10 == 0 {
				s.log.Warn("spool: forwarding to Service Bus failed; retrying", "error", err, "messages", len(held), "attempt", attempt)
			}
			if timedOut && len(held) > 1 {
				half := len(held) / 2
				s.release(ctx, held[half:])
				held = held[:half]
				size.n, size.probeAt = half, time.Now().Add(sizerHoldAfterTimeout)
			}
		}
		if !sleep(ctx, s.retryWait(attempt)) {
			s.release(ctx, held)
			return nil
		}
		held = s.renew(ctx, held, lockSpan)
		if len(held) == 0 {
			return nil
		}
	}
}

// oneByOne sends held one message at a time after the primary refused the
// batch as too large: the messages it refuses alone are set aside in the
// store's dead-letter queue, the ones it takes are completed, and the rest
// (failed otherwise) are returned.
func (s *Spool) oneByOne(ctx context.Context, held []*relay.Received) []*relay.Received {
	var rest []*relay.Received
	for _, m := range held {
		sctx, cancel := context.WithTimeout(ctx, s.cfg.SendTimeout)
		err := s.primary.SendBatch(sctx, []relay.Message{fromStore(m.Message)})
		cancel()
		switch {
		case err == nil:
			s.completed(ctx, []*relay.Received{m})
		case errors.Is(err, relay.ErrMessageTooLarge):
			s.setAside(ctx, m, err)
		default:
			rest = append(rest, m)
		}
	}
	return rest
}

// setAside dead-letters m in the store: the primary will never take it.
func (s *Spool) setAside(ctx context.Context, m *relay.Received, cause error) {
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
	defer cancel()
	desc := fmt.Sprintf("Service Bus refused the spooled event: %v", cause)
	if err := s.store.DeadLetter(sctx, m, ReasonTooLarge, desc); err != nil {
		s.log.Error("spool: cannot set aside an event Service Bus refuses as too large; it will be tried again", "message_id", m.ID, "event_id", m.Properties[relay.PropID], "partition_key", m.SessionID, "error", err)
		return
	}
	s.metrics.deadLettered.Inc()
	s.log.Error("spool: Service Bus refuses a spooled event as too large; it stays in the spool's dead-letter queue", "message_id", m.ID, "event_id", m.Properties[relay.PropID], "partition_key", m.SessionID, "reason", ReasonTooLarge, "error", cause)
	s.mu.Lock()
	s.account([]*relay.Received{m})
	s.mu.Unlock()
}

// completed removes sent messages from the store. A message whose
// completion fails stays (its session still routed to the spool) and is
// forwarded again once its lock expires; the primary drops the copy.
func (s *Spool) completed(ctx context.Context, held []*relay.Received) {
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
	defer cancel()
	done := held[:0:0]
	for _, m := range held {
		if err := s.store.Complete(sctx, m); err != nil {
			s.log.Warn("spool: cannot remove a forwarded event from the spool; it will be forwarded again and dropped as a duplicate", "message_id", m.ID, "error", err)
			continue
		}
		done = append(done, m)
	}
	s.metrics.forwarded.Add(float64(len(done)))
	s.mu.Lock()
	s.account(done)
	s.forwarded += int64(len(done))
	s.mu.Unlock()
	s.checkDrained()
}

// account records that msgs left the store (the caller holds mu).
func (s *Spool) account(msgs []*relay.Received) {
	for _, m := range msgs {
		s.depth = max(s.depth-1, 0)
		leftover := false
		if s.recovering {
			if _, ok := s.newIDs[m.ID]; ok {
				delete(s.newIDs, m.ID)
			} else {
				// Left by an earlier run: never counted in pending, so
				// it must not uncount a newer event of its call.
				leftover = true
				if s.oldLeft--; s.oldLeft <= 0 {
					s.recovering, s.newIDs = false, nil
					s.log.Info("spool: the events left by an earlier run are forwarded; calls with nothing in the spool go straight to Service Bus again")
				}
			}
		}
		if k := m.SessionID; k != "" && !leftover {
			if s.pending[k]--; s.pending[k] <= 0 {
				delete(s.pending, k)
			}
		}
	}
}

// checkDrained notices that the store is empty: spooling ends, and every
// session's messages go straight to the primary again.
func (s *Spool) checkDrained() {
	s.mu.Lock()
	if !s.spooling || s.depth > 0 || s.inflight > 0 {
		s.mu.Unlock()
		return
	}
	took, forwarded := time.Since(s.spoolingSince), s.forwarded
	s.spooling, s.recovering, s.newIDs, s.oldest = false, false, nil, time.Time{}
	clear(s.pending)
	s.mu.Unlock()
	s.log.Info("spool drained: events go straight to Service Bus again", "forwarded", forwarded, "spooled_for", took.Round(time.Millisecond).String())
}

// storeCheckPolls is how many idle polls pass between checks that the
// store can commit (10s at the default Poll).
const storeCheckPolls = 10

// checkStore asks the store, every storeCheckPolls idle polls, whether it
// can commit now (the SQLite store writes a probe). A spool that could not
// take events must show while Service Bus is healthy, not once the outage
// that needs it has begun: the answer is in State, the
// hookbridge_spool_store_ready gauge and a log line when it changes. It
// does not fail readiness: while Service Bus takes sends, the ingress does.
func (s *Spool) checkStore(ctx context.Context) {
	r, ok := s.store.(interface{ Ready(context.Context) error })
	if !ok {
		return
	}
	if s.idlePolls++; s.idlePolls%storeCheckPolls != 1 {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, settleTimeout)
	err := r.Ready(cctx)
	cancel()
	if ctx.Err() != nil {
		return
	}
	s.mu.Lock()
	was := s.storeHealth
	s.storeHealth = err
	s.mu.Unlock()
	switch {
	case err != nil && was == nil:
		s.log.Error("spool: the spool cannot commit; should Service Bus fail now, requests would get 503 instead of being spooled: fix the spool's volume", "error", err)
	case err == nil && was != nil:
		s.log.Info("spool: the spool can commit again")
	}
}

// idle runs when the forwarder found nothing to receive: it checks the
// store's health now and then, and corrects the message count from the
// store's (duplicates the store dropped, a commit that failed without
// storing), which may reveal that the spool drained.
func (s *Spool) idle(ctx context.Context) {
	s.checkStore(ctx)
	s.mu.Lock()
	if s.depth == 0 {
		s.mu.Unlock()
		s.checkDrained()
		return
	}
	gen := s.gen
	s.mu.Unlock()
	active, _, err := s.store.Counts(ctx)
	if err != nil {
		return
	}
	s.mu.Lock()
	if s.gen == gen && s.inflight == 0 {
		s.depth = active
	}
	s.mu.Unlock()
	s.checkDrained()
}

// renew extends the locks of held that are past half their span and drops
// the messages whose lock is lost (the store hands them out again).
func (s *Spool) renew(ctx context.Context, held []*relay.Received, span time.Duration) []*relay.Received {
	kept := held[:0]
	for _, m := range held {
		if time.Until(m.LockedUntil) < span/2 {
			if err := s.store.RenewLock(ctx, m); errors.Is(err, relay.ErrLockLost) {
				continue
			} else if err != nil {
				s.log.Debug("spool: cannot renew the lock of a spooled event", "message_id", m.ID, "error", err)
			}
		}
		kept = append(kept, m)
	}
	return kept
}

// release abandons held so that the next run forwards them at once.
func (s *Spool) release(ctx context.Context, held []*relay.Received) {
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
	defer cancel()
	for _, m := range held {
		if err := s.store.Abandon(sctx, m, 0); err != nil {
			s.log.Warn("spool: cannot release a spooled event; it is forwarded once its lock expires", "message_id", m.ID, "error", err)
		}
	}
}

// noteOldest records the enqueue time of the oldest message in held: the
// store hands out every session's oldest message, so this is the oldest
// waiting to be forwarded, or close to it.
func (s *Spool) noteOldest(held []*relay.Received) {
	oldest := held[0].EnqueuedTime
	for _, m := range held[1:] {
		if m.EnqueuedTime.Before(oldest) {
			oldest = m.EnqueuedTime
		}
	}
	s.mu.Lock()
	s.oldest = oldest
	s.mu.Unlock()
}

// sleep waits d or until ctx ends, reporting whether it waited d.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// retryWait is the wait before retry number attempt of a failing step:
// RetryMin doubled per attempt up to RetryMax, jittered.
func (s *Spool) retryWait(attempt int) time.Duration {
	return relay.Backoff(attempt, s.cfg.RetryMin, s.cfg.RetryMax)
}
