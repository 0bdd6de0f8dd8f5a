package consumer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/hookbridge/hookbridge/relay"
	"github.com/hookbridge/hookbridge/schemas"
)

// Source is the queue a worker consumes. Implementations (relay/sqlite,
// relay/servicebus) hand out each message under a lock, and never hand out a
// session's next message before its previous one is settled; the worker
// relies on that for per-call ordering.
type Source interface {
	// Receive blocks until at least one message is available and returns up
	// to n, locked. It returns relay.ErrClosed once the source is closed.
	Receive(ctx context.Context, n int) ([]*relay.Received, error)
	// Complete removes the message.
	Complete(ctx context.Context, m *relay.Received) error
	// Abandon releases the lock for redelivery no sooner than delay from now.
	// A backend without delayed redelivery (Service Bus) holds the message,
	// its lock renewed, for the delay and then abandons it; when ctx ends or
	// that backend stops (its Run context ends, or it is closed) it cuts the
	// hold short and abandons at once, so a stopping worker never strands a
	// message under its lock, nor waits out the delay. A backend that delays
	// natively (SQLite) abandons with the delay whether or not ctx ended.
	Abandon(ctx context.Context, m *relay.Received, delay time.Duration) error
	// DeadLetter moves the message to the dead-letter queue.
	DeadLetter(ctx context.Context, m *relay.Received, reason, description string) error
	// RenewLock extends the lock and updates m.LockedUntil.
	RenewLock(ctx context.Context, m *relay.Received) error
}

// Handler delivers one event. It returns nil once the event is delivered, a
// *PermanentError (see Permanent) when no retry can succeed, or any other
// error for a retry with backoff. Handle is called concurrently for events of
// different partition keys, and one at a time, in order, within a key.
type Handler interface {
	Handle(ctx context.Context, e *schemas.Event) error
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, e *schemas.Event) error

// Handle calls f.
func (f HandlerFunc) Handle(ctx context.Context, e *schemas.Event) error { return f(ctx, e) }

// Config configures a Worker. Zero values take the defaults noted.
type Config struct {
	// Concurrency is the most deliveries in flight, across partition keys.
	// Default 8.
	Concurrency int
	// DeliveryTimeout bounds one Handle call. Default 30s.
	DeliveryTimeout time.Duration
	// MinBackoff and MaxBackoff bound the wait before a failed delivery is
	// retried: MinBackoff doubled for each earlier delivery, with jitter,
	// capped at MaxBackoff. Defaults 1s and 2m.
	MinBackoff time.Duration
	MaxBackoff time.Duration
	// ShutdownTimeout is how long Run lets in-flight deliveries finish once
	// its context ends; then they are cancelled and their messages abandoned.
	// Default 30s.
	ShutdownTimeout time.Duration
	// Logger receives the worker's logs. Default: discard.
	Logger *slog.Logger
	// Metrics, if set, records deliveries.
	Metrics *Metrics
	// TracerProvider, when set, traces every delivery: a consumer span
	// "process <TraceQueue>" continuing the trace the message carries
	// (relay.RemoteSpanContext: its traceparent, else Diagnostic-Id), the
	// handler's work inside it, and a span for the settlement. Default nil:
	// tracing off, at the cost of a nil check per message.
	TracerProvider trace.TracerProvider
	// TraceQueue names the queue in span names, and TraceQueueAttributes
	// describe it (messaging.system, messaging.destination.name,
	// server.address). Used with TracerProvider only.
	TraceQueue           string
	TraceQueueAttributes []attribute.KeyValue
}

// Defaults.
const (
	// DefaultConcurrency: a call's events go one at a time, so concurrency
	// is across calls, and a backend taking d per event caps a worker at
	// DefaultConcurrency/d events a second (640/s at 50ms). On one host
	// with a fast local backend, 32 carried about 10% more than 8.
	DefaultConcurrency     = 32
	DefaultDeliveryTimeout = 30 * time.Second
	DefaultMinBackoff      = time.Second
	DefaultMaxBackoff      = 2 * time.Minute
	DefaultShutdownTimeout = 30 * time.Second
)

// Validate reports the first invalid setting.
func (c Config) Validate() error {
	switch {
	case c.Concurrency < 0 || c.Concurrency > 1024:
		return fmt.Errorf("concurrency %d: must be between 1 and 1024", c.Concurrency)
	case c.DeliveryTimeout < 0:
		return fmt.Errorf("delivery timeout %s: must not be negative", c.DeliveryTimeout)
	case c.MinBackoff < 0 || c.MaxBackoff < 0:
		return fmt.Errorf("backoff %s..%s: must not be negative", c.MinBackoff, c.MaxBackoff)
	case c.MaxBackoff != 0 && c.MinBackoff > c.MaxBackoff:
		return fmt.Errorf("min backoff %s exceeds max backoff %s", c.MinBackoff, c.MaxBackoff)
	case c.ShutdownTimeout < 0:
		return fmt.Errorf("shutdown timeout %s: must not be negative", c.ShutdownTimeout)
	}
	return nil
}

func (c *Config) setDefaults() {
	if c.Concurrency == 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.DeliveryTimeout == 0 {
		c.DeliveryTimeout = DefaultDeliveryTimeout
	}
	if c.MinBackoff == 0 {
		c.MinBackoff = DefaultMinBackoff
	}
	if c.MaxBackoff == 0 {
		c.MaxBackoff = max(DefaultMaxBackoff, c.MinBackoff)
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = DefaultShutdownTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// settleTimeout bounds one settlement call; settlements use their own context
// so that they still happen during shutdown.
const settleTimeout = 30 * time.Second

// Worker receives messages from a Source, hands each event to a Handler and
// settles the message by the outcome: nil → complete; *PermanentError →
// dead-letter; any other error → abandon after a backoff, so the queue
// redelivers it; on the last delivery the queue allows
// (relay.Received.MaxDeliveryCount) the worker dead-letters it itself with
// reason relay.ReasonMaxDelivery and the last error, so every dead-lettering
// is counted and logged. Locks are renewed while a delivery runs.
type Worker struct {
	src   Source
	h     Handler
	cfg   Config
	log   *slog.Logger
	trace *tracer // nil: tracing off
}

// New returns a worker. Run starts it.
func New(src Source, h Handler, cfg Config) (*Worker, error) {
	if src == nil || h == nil {
		return nil, errors.New("consumer: a source and a handler are required")
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("consumer: %w", err)
	}
	cfg.setDefaults()
	return &Worker{src: src, h: h, cfg: cfg, log: cfg.Logger,
		trace: newTracer(cfg.TracerProvider, cfg.TraceQueue, cfg.TraceQueueAttributes)}, nil
}

// Run consumes until ctx ends or the source closes. On ctx's end it stops
// receiving, gives in-flight deliveries ShutdownTimeout to finish, then
// cancels the rest; every message it holds is settled (or abandoned) before
// Run returns. It returns nil after a shutdown through ctx, and the source's
// error otherwise.
func (w *Worker) Run(ctx context.Context) error {
	// hard is cancelled only when the shutdown grace period is over.
	hard, cancelHard := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelHard()
	slots := make(chan struct{}, w.cfg.Concurrency)
	var wg sync.WaitGroup
	work := make(chan *relay.Received)
	defer close(work) // idle deliverers return
	runErr := w.receiveLoop(ctx, hard, slots, work, &wg)
	if n := len(slots); n > 0 {
		w.log.Info("worker: stopping; letting deliveries in flight finish", "in_flight", n, "timeout", w.cfg.ShutdownTimeout)
	}

	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(w.cfg.ShutdownTimeout):
		w.log.Warn("worker: shutdown timeout reached; cancelling deliveries still in flight",
			"in_flight", len(slots), "timeout", w.cfg.ShutdownTimeout)
		cancelHard()
		<-done
	}
	return runErr
}

func (w *Worker) receiveLoop(ctx, hard context.Context, slots chan struct{}, work chan *relay.Received, wg *sync.WaitGroup) error {
	// A delivery runs on a deliverer that stays for the next one, so its
	// stack, grown deep in the queue's settlement (SQLite's interpreter on
	// the embedded queue), is not grown from scratch for every message.
	// Deliverers are started as needed, at most one per slot. A message
	// holds a slot, so when all deliverers exist at least one of them is
	// idle or about to be: handing the message over waits only for that.
	// A deliverer whose handler ends its goroutine (runtime.Goexit) leaves
	// the count before it gives its slot back, so the message that slot
	// admits next starts a new deliverer instead of waiting for it.
	var live atomic.Int32
	deliverer := func(m *relay.Received) {
		for ok := true; ok; m, ok = <-work {
			returned := false
			func() {
				defer func() {
					if !returned {
						live.Add(-1)
					}
					<-slots
					wg.Done()
				}()
				w.process(ctx, hard, m)
				returned = true
			}()
		}
		live.Add(-1)
	}
	failures := 0
	for {
		// Wait for one free slot, then take every other free one.
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return nil
		}
		free := 1
	take:
		for free < cap(slots) {
			select {
			case slots <- struct{}{}:
				free++
			default:
				break take
			}
		}
		msgs, err := w.src.Receive(ctx, free)
		for range free - len(msgs) {
			<-slots
		}
		switch {
		case ctx.Err() != nil:
			// Messages received just as ctx ended are still delivered.
		case errors.Is(err, relay.ErrClosed):
			return fmt.Errorf("worker: %w", err)
		case err != nil:
			failures++
			wait := relay.Backoff(failures, 100*time.Millisecond, 10*time.Second)
			w.log.Error("worker: receive failed; retrying", "error", err, "retry_in", wait)
			select {
			case <-time.After(wait):
			case <-ctx.Done():
			}
			continue
		default:
			failures = 0
		}
		for _, m := range msgs {
			wg.Add(1)
			select {
			case work <- m: // an idle deliverer
			default:
				if live.Load() < int32(cap(slots)) {
					live.Add(1)
					go deliverer(m)
				} else {
					work <- m
				}
			}
		}
		if ctx.Err() != nil {
			return nil
		}
	}
}

// process delivers one message and settles it. ctx is Run's: its end
// starts the shutdown; hard ends when the shutdown grace period is over.
func (w *Worker) process(ctx, hard context.Context, m *relay.Received) {
	start := time.Now()
	log := &msgLog{base: w.log, m: m}
	if w.trace != nil {
		span := w.trace.startProcess(ctx, m)
		defer span.End()
		ctx, hard = trace.ContextWithSpan(ctx, span), trace.ContextWithSpan(hard, span)
	}
	ev, err := m.Event()
	if err != nil {
		w.settle(ctx, log, m, nil, delivery{err: Permanent(ReasonInvalidMessage, err)}, start)
		return
	}
	log.withEvent(ev)
	if w.trace != nil {
		setEvent(trace.SpanFromContext(ctx), ev)
	}

	dctx, cancel := context.WithTimeout(hard, w.cfg.DeliveryTimeout)
	lockLost := make(chan struct{})
	renewDone := make(chan struct{})
	go func() {
		defer close(renewDone)
		w.renewLoop(dctx, log, m, lockLost, cancel)
	}()
	err = w.h.Handle(dctx, ev)
	d := delivery{err: err}
	if err != nil {
		d.cutOff = hard.Err() != nil
		d.timedOut = !d.cutOff && errors.Is(dctx.Err(), context.DeadlineExceeded)
	}
	cancel()
	<-renewDone
	select {
	case <-lockLost:
		// Someone else may hold the message now; settling is not ours to do.
		w.cfg.Metrics.observe(outcomeLockLost, ev, start)
		if w.trace != nil {
			recordLockLost(trace.SpanFromContext(ctx), err)
		}
		log.logger().Warn("worker: lock lost during delivery; "+againOrDeadLettered(m), "delivery_error", err)
		return
	default:
	}
	w.settle(ctx, log, m, ev, d, start)
}

// delivery is how a Handle call ended.
type delivery struct {
	err error
	// cutOff: the shutdown grace period ended while it ran. Not the
	// backend's failure: the message is abandoned for redelivery at once.
	cutOff bool
	// timedOut: it ran longer than Config.DeliveryTimeout.
	timedOut bool
}

// renewLoop renews m's lock at half its remaining time until ctx ends. If the
// lock is lost it closes lost and cancels the delivery.
func (w *Worker) renewLoop(ctx context.Context, log *msgLog, m *relay.Received, lost chan struct{}, cancel context.CancelFunc) {
	for {
		wait := time.Until(m.LockedUntil) / 2
		if wait < 50*time.Millisecond {
			wait = 50 * time.Millisecond
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
		err := w.src.RenewLock(rctx, m)
		rcancel()
		switch {
		case err == nil:
		case errors.Is(err, relay.ErrLockLost):
			close(lost)
			cancel()
			return
		case time.Now().After(m.LockedUntil):
			log.logger().Error("worker: lock renewal failed and the lock expired", "error", err)
			close(lost)
			cancel()
			return
		default:
			log.logger().Warn("worker: lock renewal failed; trying again", "error", err)
		}
	}
}

// settle applies the settlement rules to a finished delivery. ctx is Run's;
// settlements get a context of their own, so that they still happen during
// shutdown.
func (w *Worker) settle(ctx context.Context, log *msgLog, m *relay.Received, ev *schemas.Event, d delivery, start time.Time) {
	var (
		outcome             string
		delay               time.Duration
		reason, description string
	)
	err := d.err
	lastDelivery := m.MaxDeliveryCount > 0 && m.DeliveryCount >= m.MaxDeliveryCount
	switch p, permanent := IsPermanent(err); {
	case err == nil:
		outcome = outcomeCompleted
	case permanent:
		outcome, reason, description = outcomeDeadLettered, p.Reason, err.Error()
		log.logger().Warn("worker: delivery failed permanently; dead-lettering", "reason", reason, "error", err)
	case lastDelivery:
		// Abandoning it now would make the queue dead-letter it where
		// nobody sees; do it here, saying why.
		outcome, reason = outcomeDeadLettered, relay.ReasonMaxDelivery
		description = fmt.Sprintf("delivery %d of %d failed: %v", m.DeliveryCount, m.MaxDeliveryCount, err)
		if d.cutOff {
			description = fmt.Sprintf("delivery %d of %d was cut off by the worker's shutdown: %v", m.DeliveryCount, m.MaxDeliveryCount, err)
		}
		log.logger().Error("worker: the last delivery the queue allows failed; dead-lettering", "reason", reason,
			"max_delivery_count", m.MaxDeliveryCount, "error", err, "cause", cause(d))
	case d.cutOff:
		outcome = outcomeAbandoned
		log.logger().Warn("worker: delivery cut off by shutdown; abandoned for redelivery at once", "error", err,
			"shutdown_timeout", w.cfg.ShutdownTimeout)
	default:
		outcome = outcomeRetried
		delay = relay.Backoff(m.DeliveryCount, w.cfg.MinBackoff, w.cfg.MaxBackoff)
		var ra *RetryAfterError
		if errors.As(err, &ra) && ra.After > delay {
			delay = min(ra.After, w.cfg.MaxBackoff)
		}
		if d.timedOut {
			log.logger().Warn("worker: delivery took longer than the delivery timeout; will retry", "cause", causeDeliveryTimeout,
				"delivery_timeout", w.cfg.DeliveryTimeout, "error", err, "retry_in", delay)
		} else {
			log.logger().Warn("worker: delivery failed; will retry", "error", err, "retry_in", delay)
		}
	}
	// A queue without delayed abandon holds the message for the delay, so
	// the settlement's own deadline starts after it.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout+delay)
	defer cancel()
	var settleSpan trace.Span
	if w.trace != nil {
		sctx, settleSpan = w.trace.startSettle(sctx, outcome)
	}
	var serr error
	switch outcome {
	case outcomeCompleted:
		serr = w.src.Complete(sctx, m)
	case outcomeDeadLettered:
		serr = w.src.DeadLetter(sctx, m, reason, relay.Truncate(description, maxDescription))
	default:
		serr = w.abandon(ctx, sctx, m, delay)
	}
	if serr != nil {
		if errors.Is(serr, relay.ErrLockLost) {
			log.logger().Warn("worker: lock lost before settlement; "+againOrDeadLettered(m), "settlement", outcome, "error", serr)
		} else {
			log.logger().Error("worker: settlement failed; "+againOrDeadLettered(m)+" when its lock expires", "settlement", outcome, "error", serr)
		}
		outcome = outcomeSettleFailed
	}
	if settleSpan != nil {
		endSettle(settleSpan, trace.SpanFromContext(ctx), outcome, reason, delay, d, serr)
	}
	w.cfg.Metrics.observe(outcome, ev, start)
	if outcome == outcomeCompleted && log.base.Enabled(ctx, slog.LevelDebug) {
		log.logger().Debug("worker: delivered", "duration", time.Since(start))
	}
}

// msgLog logs about one message, with its identifiers (and its event's,
// once parsed) on every record. The logger carrying them is built on the
// first record: a delivery that logs nothing, the common case, does not pay
// for formatting them. Callers log through logger() itself, so a handler
// recording the source line sees theirs.
type msgLog struct {
	base *slog.Logger
	m    *relay.Received
	// The event's identifiers, copied when it is parsed: the handler may
	// change the event while the renewal loop logs.
	eventID, eventType string
	parsed             bool

	once sync.Once // the renewal loop may log while the delivery does
	l    *slog.Logger
}

// withEvent adds the parsed event's identifiers; call it before anything
// logs.
func (ml *msgLog) withEvent(ev *schemas.Event) {
	ml.eventID, ml.eventType, ml.parsed = ev.ID, ev.Type, true
}

func (ml *msgLog) logger() *slog.Logger {
	ml.once.Do(func() {
		m := ml.m
		args := []any{"message_id", m.ID, "sequence_number", m.SequenceNumber,
			"partition_key", m.SessionID, "delivery_count", m.DeliveryCount}
		if ml.parsed {
			args = append(args, "event_id", ml.eventID, "type", ml.eventType)
		}
		ml.l = ml.base.With(args...)
	})
	return ml.l
}

// maxDescription bounds the dead-letter description the worker writes.
const maxDescription = 1024

// causeDeliveryTimeout is the log's cause for a delivery that outlasted
// Config.DeliveryTimeout.
const causeDeliveryTimeout = "delivery_timeout"

func cause(d delivery) string {
	switch {
	case d.cutOff:
		return "shutdown"
	case d.timedOut:
		return causeDeliveryTimeout
	}
	return "delivery_failed"
}

// abandon gives m back for redelivery after delay. A queue without delayed
// abandon (Service Bus) holds the message for the delay; that hold ends when
// Run's ctx ends, so a backing-off message cannot keep a stopping worker (and
// its process) waiting, and the message is given back at once instead.
// Every Source abandons whether or not ctx ended (see Source.Abandon), so
// ending it can only cut a hold short.
func (w *Worker) abandon(runCtx, sctx context.Context, m *relay.Received, delay time.Duration) error {
	ctx, cancel := context.WithCancel(sctx)
	defer cancel()
	defer context.AfterFunc(runCtx, cancel)()
	return w.src.Abandon(ctx, m, delay)
}

// againOrDeadLettered says what the queue does with m once its lock is
// gone without a settlement: deliver it again, or, on the last delivery it
// allows, dead-letter it (reason MaxDeliveryCountExceeded).
func againOrDeadLettered(m *relay.Received) string {
	if m.MaxDeliveryCount > 0 && m.DeliveryCount >= m.MaxDeliveryCount {
		return "this was the last delivery the queue allows, so the queue dead-letters the event (" + relay.ReasonMaxDelivery + ")"
	}
	return "the queue will deliver the event again"
}
