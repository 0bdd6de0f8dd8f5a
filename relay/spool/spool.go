package spool

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hookbridge/hookbridge/relay"
)

// Primary is the queue the spool stands in front of (Service Bus): it must
// report a failure a retry may fix as relay.ErrUnavailable and a message no
// retry can take as relay.ErrMessageTooLarge, and must deduplicate by
// MessageID.
type Primary interface {
	SendBatch(ctx context.Context, msgs []relay.Message) error
}

// Store is the spool's durable local queue (relay/sqlite): SendBatch
// returns once the messages are durable; Receive hands out a session's
// messages one at a time, in order, each under a lock that RenewLock
// extends; Complete, Abandon and DeadLetter settle them; Counts reports the
// active and dead-lettered messages.
type Store interface {
	SendBatch(ctx context.Context, msgs []relay.Message) error
	Receive(ctx context.Context, n int) ([]*relay.Received, error)
	Complete(ctx context.Context, m *relay.Received) error
	Abandon(ctx context.Context, m *relay.Received, delay time.Duration) error
	RenewLock(ctx context.Context, m *relay.Received) error
	DeadLetter(ctx context.Context, m *relay.Received, reason, description string) error
	Counts(ctx context.Context) (active, deadLettered int64, err error)
}

// Spool is a relay.BatchSender that sends to a primary queue and, when the
// primary fails or is slow, commits the messages to a local store instead;
// Run forwards them to the primary in each session's order. See the
// package documentation for its guarantees.
type Spool struct {
	primary Primary
	store   Store
	cfg     Config
	log     *slog.Logger
	metrics *metrics

	// known is closed once Run has read what the store holds: until then
	// no commit is routed.
	known chan struct{}
	// downHint mirrors down for the direct path's lock-free check.
	downHint atomic.Bool

	mu sync.Mutex
	// tails holds, per session, the last commit that carries it: a later
	// commit of the session waits for it to finish (see begin).
	tails map[string]*op
	// pending counts, per session, the messages that may be in the store
	// or on their way to it; never fewer than there are. While a session
	// has some, its new messages go to the store too.
	pending map[string]int64
	// depth counts the messages the store may hold (never fewer), inflight
	// those of commits to it in progress; gen changes with each commit's
	// start and end, so a count read meanwhile is not trusted.
	depth, inflight int64
	gen             uint64
	// recovering: the store held oldLeft messages of unknown sessions when
	// Run started, so every session's messages go to the store until those
	// are forwarded; newIDs are the IDs committed since (not old ones).
	recovering bool
	oldLeft    int64
	newIDs     map[string]struct{}
	// down: the primary failed recently; until downUntil (or the
	// forwarder's next success) new messages skip the direct attempt.
	down      bool
	downSince time.Time
	downUntil time.Time
	lastErr   error // the primary's latest failure
	// storeErr is the latest failed commit to the store, at storeErrAt;
	// nil once one succeeds.
	storeErr   error
	storeErrAt time.Time
	// storeHealth is the store's answer to the forwarder's latest
	// readiness check (see checkStore).
	storeHealth error
	idlePolls   int // owned by Run
	// spooling: the store has (or may have) messages; set by the first
	// commit to it, cleared when the forwarder has drained it.
	spooling      bool
	spoolingSince time.Time
	forwarded     int64     // messages forwarded since spooling began
	oldest        time.Time // enqueue time of the oldest message the forwarder holds
	started       bool      // Run was called
	running       bool
}

// New returns a spool sending to primary, falling back to store. Run must
// be running for SendBatch to route messages.
func New(primary Primary, store Store, cfg Config) (*Spool, error) {
	if primary == nil || store == nil {
		return nil, errors.New("spool: a primary queue and a store are both required")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	s := &Spool{
		primary: primary,
		store:   store,
		cfg:     cfg,
		log:     cfg.Logger,
		known:   make(chan struct{}),
		tails:   map[string]*op{},
		pending: map[string]int64{},
	}
	s.metrics = newMetrics(cfg.Registerer, s)
	return s, nil
}

// Config returns the effective settings (defaults filled in).
func (s *Spool) Config() Config { return s.cfg }

// op is one SendBatch call, as its sessions' later commits see it.
type op struct {
	done chan struct{}
	// prevs are the earlier commits this one stopped waiting for (its
	// context ended): a later commit waits for them instead. Set before
	// done is closed.
	prevs []*op
}

// begin registers a commit of msgs as the last of each of its sessions and
// returns the earlier commits it must wait for. Commits of one session are
// thus serialized: had a later commit been sent directly while an earlier
// one was still in flight, and the earlier failed (to be spooled and
// forwarded later), the session's order would be lost. Commits of
// different sessions run concurrently.
func (s *Spool) begin(msgs []relay.Message) (o *op, waits []*op) {
	o = &op{done: make(chan struct{})}
	s.mu.Lock()
	for i := range msgs {
		k := msgs[i].SessionID
		if k == "" {
			continue
		}
		switch t := s.tails[k]; t {
		case o:
		case nil:
			s.tails[k] = o
		default:
			waits = append(waits, t)
			s.tails[k] = o
		}
	}
	s.mu.Unlock()
	return o, waits
}

// end unregisters o, letting its sessions' later commits proceed.
func (s *Spool) end(o *op, msgs []relay.Message) {
	s.mu.Lock()
	for i := range msgs {
		if k := msgs[i].SessionID; k != "" && s.tails[k] == o {
			delete(s.tails, k)
		}
	}
	s.mu.Unlock()
	close(o.done)
}

// waitFor waits until every op in ops has finished, and every earlier op
// one of them gave up on. If ctx ends first it returns those not yet seen
// to finish.
func waitFor(ctx context.Context, ops []*op) ([]*op, error) {
	for len(ops) > 0 {
		o := ops[len(ops)-1]
		select {
		case <-o.done:
			ops = append(ops[:len(ops)-1], o.prevs...)
		case <-ctx.Done():
			return ops, ctx.Err()
		}
	}
	return nil, nil
}

// SendBatch commits msgs to the primary, or to the spool when the primary
// fails with relay.ErrUnavailable or takes longer than Config.After, and
// returns nil once one of them has every message durably. A message of a
// session that has messages in the spool goes to the spool, behind them.
// relay.ErrMessageTooLarge from the primary is returned as is, once the
// messages bound for the spool are committed: no retry, and no forwarding,
// could deliver the too-large message. Errors wrap
// relay.ErrUnavailable when a retry may succeed, ErrFull among them.
func (s *Spool) SendBatch(ctx context.Context, msgs []relay.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	o, waits := s.begin(msgs)
	defer s.end(o, msgs)
	if len(waits) > 0 {
		if rest, err := waitFor(ctx, waits); err != nil {
			o.prevs = rest
			return fmt.Errorf("%w: spool: waiting for an earlier commit of the same call: %w", relay.ErrUnavailable, err)
		}
	}
	select {
	case <-s.known:
	default:
		select {
		case <-s.known:
		case <-ctx.Done():
			return fmt.Errorf("%w: spool: still reading what the spool holds (is the forwarder running?): %w", relay.ErrUnavailable, ctx.Err())
		}
	}
	direct, spooled, counts := s.route(msgs)
	var cause error
	if len(direct) > 0 {
		slow, err := s.sendDirect(ctx, direct)
		switch {
		case err == nil:
		case errors.Is(err, relay.ErrMessageTooLarge):
			// The primary took the others (see servicebus.Queue.SendBatch);
			// the spool's share is still owed, and the too-large one is
			// refused for good.
			if len(spooled) > 0 {
				if cerr := s.commit(ctx, spooled, counts, nil); cerr != nil {
					return cerr
				}
			}
			return err
		case ctx.Err() != nil:
			return err
		case slow || errors.Is(err, relay.ErrUnavailable):
			r := reasonFailed
			if slow {
				r = reasonSlow
				err = fmt.Errorf("no answer within %s: %w", s.cfg.After, err)
			}
			counts[r] += len(direct)
			spooled = append(spooled, direct...)
			cause = err
			s.primaryFailed(err)
		default:
			return err
		}
	}
	if len(spooled) == 0 {
		return nil
	}
	return s.commit(ctx, spooled, counts, cause)
}

// sendDirect sends msgs to the primary within Config.After; slow reports
// that the budget, not the caller's context, ended the send.
func (s *Spool) sendDirect(ctx context.Context, msgs []relay.Message) (slow bool, err error) {
	dctx, cancel := context.WithTimeout(ctx, s.cfg.After)
	defer cancel()
	err = s.primary.SendBatch(dctx, msgs)
	if err == nil {
		if s.downHint.Load() {
			s.primaryOK()
		}
		return false, nil
	}
	return dctx.Err() != nil && ctx.Err() == nil, err
}

// reason says why a message went to the spool (a metric label).
type reason int

const (
	reasonFailed  reason = iota // its direct send failed
	reasonSlow                  // its direct send took longer than Config.After
	reasonDown                  // the primary failed moments ago
	reasonOrder                 // its session has messages in the spool
	reasonRestart               // the spool held messages of unknown sessions at start
	numReasons
)

var reasonNames = [numReasons]string{"failed", "slow", "down", "order", "restart"}

// route splits msgs into those to try on the primary and those that go to
// the spool, with why. A session's messages all go the same way. direct
// is msgs itself when nothing is spooled.
func (s *Spool) route(msgs []relay.Message) (direct, spooled []relay.Message, counts [numReasons]int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	down := s.down && time.Now().Before(s.downUntil)
	if !down && !s.recovering && len(s.pending) == 0 {
		return msgs, nil, counts
	}
	for i := range msgs {
		r := reason(-1)
		k := msgs[i].SessionID
		switch {
		case k != "" && s.pending[k] > 0:
			r = reasonOrder
		case k != "" && s.recovering:
			r = reasonRestart
		case down:
			r = reasonDown
		}
		if r < 0 {
			direct = append(direct, msgs[i])
			continue
		}
		counts[r]++
		spooled = append(spooled, msgs[i])
	}
	return direct, spooled, counts
}

// commit writes msgs to the store and returns once they are durable.
// cause is the primary's failure that sent them here, if any.
func (s *Spool) commit(ctx context.Context, msgs []relay.Message, counts [numReasons]int, cause error) error {
	n := int64(len(msgs))
	s.mu.Lock()
	if held := s.depth + s.inflight; held+n > s.cfg.MaxMessages {
		since := s.downSince
		s.mu.Unlock()
		s.metrics.refused("full", n)
		return fmt.Errorf("%w: %w: it holds %d of at most %d events; the forwarder drains it once Service Bus takes sends again (failing since %s); fix Service Bus or give the spool more room",
			relay.ErrUnavailable, ErrFull, held, s.cfg.MaxMessages, since.Format(time.RFC3339))
	}
	s.inflight += n
	s.gen++
	for i := range msgs {
		if k := msgs[i].SessionID; k != "" {
			s.pending[k]++
		}
		if s.recovering {
			s.newIDs[msgs[i].ID] = struct{}{}
		}
	}
	started := !s.spooling
	if started {
		s.spooling, s.spoolingSince, s.forwarded = true, time.Now(), 0
	}
	s.mu.Unlock()
	if started {
		attrs := []any{"reason", reasonNames[mainReason(counts)]}
		if cause != nil {
			attrs = append(attrs, "error", cause)
		}
		s.log.Warn("spooling: events go to the local spool and are forwarded to Service Bus in each call's order once it takes them", attrs...)
	}

	err := s.store.SendBatch(ctx, toStore(msgs))

	s.mu.Lock()
	s.inflight -= n
	s.depth += n // even on failure: the messages may be stored, and depth never undercounts
	s.gen++
	s.storeErr, s.storeErrAt = err, time.Now()
	s.mu.Unlock()
	if err != nil {
		s.metrics.refused("error", n)
		if cause != nil {
			return fmt.Errorf("%w: Service Bus failed (%w) and the spool could not take the events either: %w", relay.ErrUnavailable, cause, err)
		}
		return fmt.Errorf("%w: spool: %w", relay.ErrUnavailable, err)
	}
	s.metrics.spooled(counts)
	return nil
}

func mainReason(counts [numReasons]int) reason {
	best := reasonFailed
	for r := range numReasons {
		if counts[r] > counts[best] {
			best = r
		}
	}
	return best
}

// primaryFailed records a failed or timed-out send to the primary: new
// messages skip the direct attempt for Config.Cooldown.
func (s *Spool) primaryFailed(err error) {
	now := time.Now()
	s.mu.Lock()
	if !s.down {
		s.down, s.downSince = true, now
	}
	s.downUntil = now.Add(s.cfg.Cooldown)
	s.lastErr = err
	s.mu.Unlock()
	s.downHint.Store(true)
}

// primaryOK records a successful send to the primary.
func (s *Spool) primaryOK() {
	s.mu.Lock()
	s.down = false
	s.mu.Unlock()
	s.downHint.Store(false)
}

// Properties that carry a message's dead-letter marking through the store,
// which would otherwise act on it (a store dead-letters such a message on
// arrival); the forwarder restores the marking before sending.
const (
	propDeadLetterReason      = "hookbridge_spool_dead_letter_reason"
	propDeadLetterDescription = "hookbridge_spool_dead_letter_description"
)

// toStore returns msgs as the store keeps them: a message marked for the
// dead-letter queue carries the marking in properties instead. msgs is not
// modified.
func toStore(msgs []relay.Message) []relay.Message {
	out, copied := msgs, false
	for i := range msgs {
		m := &msgs[i]
		if m.DeadLetterReason == "" && m.DeadLetterDescription == "" {
			continue
		}
		if !copied {
			out, copied = append([]relay.Message(nil), msgs...), true
		}
		props := make(map[string]any, len(m.Properties)+2)
		for k, v := range m.Properties {
			props[k] = v
		}
		props[propDeadLetterReason] = m.DeadLetterReason
		props[propDeadLetterDescription] = m.DeadLetterDescription
		out[i].Properties = props
		out[i].DeadLetterReason, out[i].DeadLetterDescription = "", ""
	}
	return out
}

// fromStore undoes toStore for one message.
func fromStore(m relay.Message) relay.Message {
	reason, ok := m.Properties[propDeadLetterReason].(string)
	if !ok {
		return m
	}
	desc, _ := m.Properties[propDeadLetterDescription].(string)
	props := make(map[string]any, len(m.Properties))
	for k, v := range m.Properties {
		if k != propDeadLetterReason && k != propDeadLetterDescription {
			props[k] = v
		}
	}
	m.Properties, m.DeadLetterReason, m.DeadLetterDescription = props, reason, desc
	return m
}
