package servicebus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"
	"github.com/Azure/go-amqp"

	"github.com/hookbridge/hookbridge/relay"
)

// Queue is a Service Bus queue as hookbridge uses it: group commit sends
// MessageBatches to it, workers receive from it (through sessions when the
// queue is session-enabled) and settle, and the dead-letter tooling reads
// its dead-letter sub-queue. It satisfies the relay/relaytest contract.
//
// Receiving from a session-enabled queue needs Run, which runs the session
// pool; sending and the dead-letter tooling do not.
type Queue struct {
	cfg     Config
	log     *slog.Logger
	client  *azservicebus.Client
	metrics *metrics
	pool    *sessionPool // session-enabled queues
	// accepts is the health of receiving: the session pool's accepts, or
	// Receive on a queue without sessions.
	accepts health

	// closed ends at Close; stopped ends when Run's context ends, or at
	// Close: the queue stops receiving and gives back what it holds.
	closed, stopped context.Context
	closeFn, stopFn context.CancelFunc
	running         sync.WaitGroup
	closeOnce       sync.Once
	closeErr        error

	mu         sync.Mutex
	runStarted bool
	sender     *azservicebus.Sender
	receiver   *azservicebus.Receiver // non-session queues
	dlq        *azservicebus.Receiver

	// dlqMu lets one receive or peek at a time use dlq: the SDK refuses a
	// second concurrent receive and keeps a receiver's peek position
	// unguarded, and one scan would otherwise take (and hold) the messages
	// another scan wants. Settling taken messages needs no turn.
	dlqMu sync.Mutex
}

// Open connects to the queue. Links open lazily, on first use.
func Open(ctx context.Context, cfg Config, log *slog.Logger) (*Queue, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	opts := &azservicebus.ClientOptions{RetryOptions: azservicebus.RetryOptions{
		MaxRetries: cfg.MaxRetries, RetryDelay: cfg.RetryDelay, MaxRetryDelay: cfg.MaxRetryDelay,
	}}
	var client *azservicebus.Client
	var err error
	switch {
	case cfg.ConnectionString != "":
		client, err = azservicebus.NewClientFromConnectionString(cfg.ConnectionString, opts)
		if err != nil {
			return nil, fmt.Errorf("servicebus: connection string: %w", err)
		}
	case cfg.Credential != nil:
		client, err = azservicebus.NewClient(cfg.Namespace, cfg.Credential, opts)
		if err != nil {
			return nil, fmt.Errorf("servicebus: %w", err)
		}
	default:
		return nil, errors.New("servicebus: no credential and no connection string: give Config.Credential (e.g. azidentity.NewDefaultAzureCredential) or Config.ConnectionString")
	}
	q := &Queue{cfg: cfg, log: log, client: client, metrics: newMetrics()}
	q.closed, q.closeFn = context.WithCancel(context.Background())
	q.stopped, q.stopFn = context.WithCancel(q.closed)
	if cfg.sessions() {
		q.pool = &sessionPool{q: q, ready: make(chan *relay.Received)}
	}
	return q, nil
}

// Config returns the effective settings.
func (q *Queue) Config() Config { return q.cfg }

// Run runs the queue's background loops until ctx ends or the queue is
// closed: on a session-enabled queue, the session pool that Receive takes
// messages from. When ctx ends it stops receiving: a message received but
// not yet handed out, and one held by Abandon for its delay, are abandoned
// at once, in order, and each session is released once the message handed
// out of it was settled (or its lock lapsed), so the session's next holder
// starts where this one stopped. Run returns nil then; it runs once per
// Queue.
func (q *Queue) Run(ctx context.Context) error {
	q.mu.Lock()
	switch {
	case q.closed.Err() != nil:
		q.mu.Unlock()
		return relay.ErrClosed
	case q.runStarted:
		q.mu.Unlock()
		return errors.New("servicebus: Run called twice; a queue runs once")
	}
	q.runStarted = true
	q.running.Add(1)
	q.mu.Unlock()
	defer q.running.Done()
	stop := context.AfterFunc(ctx, q.stopFn)
	defer stop()
	if q.pool != nil {
		q.pool.run(q.stopped)
		return nil
	}
	<-q.stopped.Done()
	return nil
}

// Ready reports whether the queue can do its work: an error once Run's
// session accepts, or Receive on a queue without sessions, have been
// failing for longer than Config.UnreadyAfter, or after Close.
func (q *Queue) Ready(ctx context.Context) error {
	if q.closed.Err() != nil {
		return relay.ErrClosed
	}
	what := "receiving"
	if q.pool != nil {
		what = "accepting sessions"
	}
	return q.accepts.check(what, q.cfg.UnreadyAfter)
}

// mapErr turns SDK errors into relay sentinels.
func mapErr(op string, err error) error {
	if err == nil {
		return nil
	}
	var sbErr *azservicebus.Error
	switch {
	case sizeExceeded(err):
		return fmt.Errorf("%w: %s: %w", relay.ErrMessageTooLarge, op, err)
	case errors.As(err, &sbErr) && sbErr.Code == azservicebus.CodeLockLost:
		return fmt.Errorf("%s: %w", op, relay.ErrLockLost)
	case errors.As(err, &sbErr) && sbErr.Code == azservicebus.CodeUnauthorizedAccess:
		return fmt.Errorf("%w: servicebus %s: not authorized; give the identity the Azure Service Bus Data Sender (ingress) or Data Receiver (worker) role: %w", relay.ErrUnavailable, op, err)
	case errors.As(err, &sbErr) && sbErr.Code == azservicebus.CodeNotFound:
		return fmt.Errorf("%w: servicebus %s: the queue does not exist; create it (see the README): %w", relay.ErrUnavailable, op, err)
	case errors.Is(err, relay.ErrClosed), errors.Is(err, relay.ErrLockLost), errors.Is(err, relay.ErrUnavailable):
		return err
	default:
		return fmt.Errorf("%w: servicebus %s: %w", relay.ErrUnavailable, op, err)
	}
}

func (q *Queue) getSender() (*azservicebus.Sender, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed.Err() != nil {
		return nil, relay.ErrClosed
	}
	if q.sender == nil {
		s, err := q.client.NewSender(q.cfg.Queue, nil)
		if err != nil {
			return nil, mapErr("open sender", err)
		}
		q.sender = s
	}
	return q.sender, nil
}

// SendBatch sends msgs in as few MessageBatches as the link's size limit
// allows. It returns nil once Service Bus acknowledged every batch. A
// message too large to fit any batch is left out, the others are sent, and
// the error is then a *relay.NotSentError naming it, wrapping
// relay.ErrMessageTooLarge. So is one that Service Bus itself refuses for
// its size (amqp:link:message-size-exceeded): a batch it refuses so, though
// the SDK sized it to fit, is sent again one message at a time.
// If a later batch fails after an earlier one succeeded, the error says so;
// a retry is deduplicated by MessageID on a queue with duplicate detection.
// A message with a DeadLetterReason is sent marked (PropDeadLetterReason),
// for this backend's receivers to dead-letter on arrival.
func (q *Queue) SendBatch(ctx context.Context, msgs []relay.Message) error {
	s, err := q.getSender()
	if err != nil {
		return err
	}
	sessions := q.cfg.sessions()
	var tooLarge, tooLargeIDs []string
	leaveOut := func(i int) {
		tooLarge = append(tooLarge, fmt.Sprintf("%q (%d bytes of body)", msgs[i].ID, len(msgs[i].Body)))
		tooLargeIDs = append(tooLargeIDs, msgs[i].ID)
	}
	ms := make([]*azservicebus.Message, len(msgs))
	var batch *azservicebus.MessageBatch
	var inBatch []int // the indices of msgs in batch
	// sendAlone sends msgs[i] in a batch of its own, leaving it out if
	// Service Bus refuses it for its size.
	sendAlone := func(i int) error {
		b, err := s.NewMessageBatch(ctx, nil)
		if err != nil {
			return mapErr("create batch", err)
		}
		err = b.AddMessage(ms[i], nil) // fails only if the link's limit shrank
		if err == nil {
			err = s.SendMessageBatch(ctx, b, nil)
		}
		switch {
		case err == nil:
			return nil
		case sizeExceeded(err):
			leaveOut(i)
			return nil
		default:
			return mapErr("send", err)
		}
	}
	send := func() error {
		if batch == nil || batch.NumMessages() == 0 {
			return nil
		}
		err := s.SendMessageBatch(ctx, batch, nil)
		sent := inBatch
		batch, inBatch = nil, nil
		switch {
		case err == nil:
			return nil
		case sizeExceeded(err) && len(sent) == 1:
			leaveOut(sent[0])
			return nil
		case sizeExceeded(err):
			for _, i := range sent {
				if err := sendAlone(i); err != nil {
					return err
				}
			}
			return nil
		default:
			return mapErr("send", err)
		}
	}
	for i := range msgs {
		ms[i] = toMessage(&msgs[i], sessions)
		for attempt := 0; ; attempt++ {
			if batch == nil {
				if batch, err = s.NewMessageBatch(ctx, nil); err != nil {
					return mapErr("create batch", err)
				}
			}
			err := batch.AddMessage(ms[i], nil)
			if err == nil {
				inBatch = append(inBatch, i)
				break
			}
			if !errors.Is(err, azservicebus.ErrMessageTooLarge) {
				return mapErr("add to batch", err)
			}
			if batch.NumMessages() == 0 || attempt > 0 {
				// It can never be sent; the others still are, so that one
				// oversized event does not take the rest of its request
				// with it.
				leaveOut(i)
				break
			}
			if err := send(); err != nil {
				return err
			}
		}
	}
	if err := send(); err != nil {
		return err
	}
	if len(tooLarge) > 0 {
		return &relay.NotSentError{IDs: tooLargeIDs, Err: fmt.Errorf("%w: %d of %d messages exceed the queue's message size limit and were not sent (the others were): %s",
			relay.ErrMessageTooLarge, len(tooLarge), len(msgs), strings.Join(tooLarge, ", "))}
	}
	return nil
}

// sizeExceeded reports whether Service Bus refused a send for its size. The
// SDK turns that condition into ErrMessageTooLarge for single messages, not
// for batches.
func sizeExceeded(err error) bool {
	var amqpErr *amqp.Error
	return errors.Is(err, azservicebus.ErrMessageTooLarge) ||
		(errors.As(err, &amqpErr) && amqpErr.Condition == amqp.ErrCondMessageSizeExceeded)
}

// Ping checks the queue is reachable and readable: a peek of one message
// of the dead-letter sub-queue, which takes no lock.
func (q *Queue) Ping(ctx context.Context) error {
	r, err := q.getDLQ()
	if err != nil {
		return err
	}
	q.dlqMu.Lock()
	_, err = r.PeekMessages(ctx, 1, nil)
	q.dlqMu.Unlock()
	if err != nil {
		var sbErr *azservicebus.Error
		if errors.As(err, &sbErr) && sbErr.Code == azservicebus.CodeUnauthorizedAccess {
			return fmt.Errorf("%w: servicebus ping: not authorized to peek the dead-letter queue, which the readiness check does; give the identity the Azure Service Bus Data Receiver role as well (an ingress with --spool does not peek): %w", relay.ErrUnavailable, err)
		}
		return mapErr("ping", err)
	}
	return nil
}

func (q *Queue) getDLQ() (*azservicebus.Receiver, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed.Err() != nil {
		return nil, relay.ErrClosed
	}
	if q.dlq == nil {
		r, err := q.client.NewReceiverForQueue(q.cfg.Queue, &azservicebus.ReceiverOptions{SubQueue: azservicebus.SubQueueDeadLetter})
		if err != nil {
			return nil, mapErr("open dead-letter receiver", err)
		}
		q.dlq = r
	}
	return q.dlq, nil
}

// Close stops receiving, gives back what the session pool holds and has
// not handed out, and closes every link and the connection. Messages handed
// out and not settled are delivered again when their locks expire.
func (q *Queue) Close() error {
	q.closeOnce.Do(func() {
		q.mu.Lock()
		q.closeFn()
		q.mu.Unlock()
		q.running.Wait() // Run's loops end on closed
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var errs []error
		q.mu.Lock()
		if q.sender != nil {
			errs = append(errs, q.sender.Close(ctx))
		}
		for _, r := range []*azservicebus.Receiver{q.receiver, q.dlq} {
			if r != nil {
				errs = append(errs, r.Close(ctx))
			}
		}
		q.mu.Unlock()
		errs = append(errs, q.client.Close(ctx))
		q.closeErr = errors.Join(errs...)
	})
	return q.closeErr
}

// handle is the backend state of one received message.
type handle struct {
	msg *azservicebus.ReceivedMessage
	// exactly one of these settles it
	rcv     *azservicebus.Receiver
	session *session

	mu      sync.Mutex
	settled bool
	done    chan struct{} // closed once settled, lost or abandoned
}

func newHandle(msg *azservicebus.ReceivedMessage, rcv *azservicebus.Receiver, s *session) *handle {
	return &handle{msg: msg, rcv: rcv, session: s, done: make(chan struct{})}
}

func (h *handle) finish() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.settled {
		h.settled = true
		close(h.done)
	}
}

func handleOf(m *relay.Received) (*handle, error) {
	h, ok := m.Backend.(*handle)
	if !ok {
		return nil, errNotFromServiceBus(fmt.Sprintf("message %s", m.ID))
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.settled {
		return nil, fmt.Errorf("message %d already settled: %w", m.SequenceNumber, relay.ErrLockLost)
	}
	return h, nil
}

// settler is what both receiver kinds offer for settling.
type settler interface {
	CompleteMessage(ctx context.Context, m *azservicebus.ReceivedMessage, o *azservicebus.CompleteMessageOptions) error
	AbandonMessage(ctx context.Context, m *azservicebus.ReceivedMessage, o *azservicebus.AbandonMessageOptions) error
	DeadLetterMessage(ctx context.Context, m *azservicebus.ReceivedMessage, o *azservicebus.DeadLetterOptions) error
}

func (h *handle) settler() settler {
	if h.session != nil {
		return h.session.sr
	}
	return h.rcv
}

// sessionLapsed reports whether h's session lock has expired: no settlement
// can succeed then.
func (h *handle) sessionLapsed() bool {
	return h.session != nil && time.Now().After(h.session.until())
}

// settle runs one settlement of h and marks it settled whatever the
// outcome, except a transient failure (the lock may still hold).
func (h *handle) settle(ctx context.Context, seq int64, op string, fn func(ctx context.Context, s settler, msg *azservicebus.ReceivedMessage) error) error {
	if h.sessionLapsed() {
		h.finish()
		return errSessionLapsed(op, seq)
	}
	err := mapErr(op, fn(ctx, h.settler(), h.msg))
	if err != nil && h.sessionLapsed() {
		err = errSessionLapsed(op, seq)
	}
	if err == nil || errors.Is(err, relay.ErrLockLost) {
		h.finish()
	}
	return err
}

// settle settles a received message through its handle.
func settle(ctx context.Context, m *relay.Received, op string, fn func(ctx context.Context, s settler, msg *azservicebus.ReceivedMessage) error) error {
	h, err := handleOf(m)
	if err != nil {
		return err
	}
	return h.settle(ctx, m.SequenceNumber, op, fn)
}

func completeFn(ctx context.Context, s settler, msg *azservicebus.ReceivedMessage) error {
	return s.CompleteMessage(ctx, msg, nil)
}

func abandonFn(ctx context.Context, s settler, msg *azservicebus.ReceivedMessage) error {
	return s.AbandonMessage(ctx, msg, nil)
}

func deadLetterFn(reason, description string) func(ctx context.Context, s settler, msg *azservicebus.ReceivedMessage) error {
	description = relay.Truncate(description, maxDescription)
	return func(ctx context.Context, s settler, msg *azservicebus.ReceivedMessage) error {
		return s.DeadLetterMessage(ctx, msg, &azservicebus.DeadLetterOptions{Reason: &reason, ErrorDescription: &description})
	}
}

// Complete removes a delivered message.
func (q *Queue) Complete(ctx context.Context, m *relay.Received) error {
	return settle(ctx, m, "complete", completeFn)
}

// DeadLetter moves a delivered message to the dead-letter sub-queue.
func (q *Queue) DeadLetter(ctx context.Context, m *relay.Received, reason, description string) error {
	return settle(ctx, m, "dead-letter", deadLetterFn(reason, description))
}

// settleTimeout bounds a settlement the queue makes on its own (giving back
// what it holds when it stops).
const settleTimeout = 30 * time.Second

// Abandon releases the message for redelivery after delay. Service Bus has
// no delayed abandon, so the message is held (its lock renewed) for the
// delay and then abandoned; on a session queue the session waits too, which
// keeps the call's later events behind it. The hold ends early, and the
// message is abandoned at once, when ctx ends or the queue stops (Run's
// context ended, or Close): a stopping worker strands nothing.
func (q *Queue) Abandon(ctx context.Context, m *relay.Received, delay time.Duration) error {
	if delay > 0 {
		if _, err := handleOf(m); err != nil {
			return err
		}
		if err := q.hold(ctx, m, delay); err != nil {
			return err
		}
	}
	if ctx.Err() != nil || q.stopped.Err() != nil {
		// Cut short: abandon now, with a deadline of its own.
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
		defer cancel()
		ctx = actx
	}
	return settle(ctx, m, "abandon", abandonFn)
}

// hold keeps m locked until delay has passed, ctx ends or the queue stops.
// It fails only when the lock is lost.
func (q *Queue) hold(ctx context.Context, m *relay.Received, delay time.Duration) error {
	deadline := time.Now().Add(delay)
	for time.Now().Before(deadline) {
		wait := min(time.Until(deadline), time.Until(m.LockedUntil)/2)
		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return nil
			case <-q.stopped.Done():
				t.Stop()
				return nil
			}
		}
		if !time.Now().Before(deadline) {
			return nil
		}
		switch err := q.RenewLock(ctx, m); {
		case err == nil:
		case errors.Is(err, relay.ErrLockLost):
			return err
		case ctx.Err() != nil:
			return nil
		case !time.Now().Before(m.LockedUntil):
			return fmt.Errorf("hold message %d for its retry delay: the lock expired after a failed renewal (%v): %w", m.SequenceNumber, err, relay.ErrLockLost)
		default:
			q.log.Warn("servicebus: lock renewal during a retry delay failed; trying again", "message_id", m.ID, "error", err)
			time.Sleep(min(time.Second, time.Until(m.LockedUntil)/4))
		}
	}
	return nil
}

// RenewLock extends the message's lock (on a session queue, the session's
// lock, which holds its messages) and updates m.LockedUntil.
func (q *Queue) RenewLock(ctx context.Context, m *relay.Received) error {
	h, err := handleOf(m)
	if err != nil {
		return err
	}
	if h.session != nil {
		if h.sessionLapsed() {
			h.finish()
			return errSessionLapsed("renew lock of", m.SequenceNumber)
		}
		if err := h.session.renew(ctx); err != nil {
			err = mapErr("renew session lock", err)
			if h.sessionLapsed() && !errors.Is(err, relay.ErrLockLost) {
				err = errSessionLapsed("renew lock of", m.SequenceNumber)
			}
			if errors.Is(err, relay.ErrLockLost) {
				h.finish()
			}
			return err
		}
		m.LockedUntil = h.session.until()
		return nil
	}
	if err := h.rcv.RenewMessageLock(ctx, h.msg, nil); err != nil {
		err = mapErr("renew lock", err)
		if errors.Is(err, relay.ErrLockLost) {
			h.finish()
		}
		return err
	}
	if h.msg.LockedUntil != nil {
		m.LockedUntil = *h.msg.LockedUntil
	}
	return nil
}

// Receive waits for at least one message and returns up to n, locked. On a
// session-enabled queue messages come from the sessions Run holds, one
// message per session at a time: a session's next message is received only
// after the previous one was settled. Receive starts no goroutine; it
// returns relay.ErrClosed once the queue stopped or closed.
func (q *Queue) Receive(ctx context.Context, n int) ([]*relay.Received, error) {
	if n <= 0 {
		n = 1
	}
	if q.stopped.Err() != nil {
		return nil, relay.ErrClosed
	}
	if q.pool != nil {
		return q.pool.receive(ctx, n)
	}
	q.mu.Lock()
	if q.receiver == nil {
		r, err := q.client.NewReceiverForQueue(q.cfg.Queue, nil)
		if err != nil {
			q.mu.Unlock()
			return nil, mapErr("open receiver", err)
		}
		q.receiver = r
	}
	r := q.receiver
	q.mu.Unlock()
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(q.stopped, cancel)()
	for {
		msgs, err := r.ReceiveMessages(rctx, n, nil)
		switch {
		case q.stopped.Err() != nil && len(msgs) == 0:
			return nil, relay.ErrClosed
		case err != nil && len(msgs) == 0:
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			err = mapErr("receive", err)
			q.accepts.fail(err)
			return nil, err
		}
		q.accepts.ok()
		out := make([]*relay.Received, 0, len(msgs))
		for _, sm := range msgs {
			h := newHandle(sm, r, nil)
			if reason, desc, ok := deadLetterMark(sm); ok {
				q.deadLetterOnArrival(ctx, h, sm, reason, desc)
				continue
			}
			out = append(out, received(sm, h, q.cfg.MaxDeliveryCount))
		}
		if len(out) > 0 {
			return out, nil
		}
	}
}

// deadLetterOnArrival dead-letters a message the ingress marked for the
// dead-letter queue. If that fails the message is abandoned, to be tried
// again; if that fails too its lock lapses and it comes back anyway.
func (q *Queue) deadLetterOnArrival(ctx context.Context, h *handle, sm *azservicebus.ReceivedMessage, reason, description string) {
	log := q.log.With("message_id", sm.MessageID, "event_id", eventID(sm), "reason", reason, "delivery_count", sm.DeliveryCount)
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
	defer cancel()
	seq := valueOr(sm.SequenceNumber, 0)
	err := h.settle(sctx, seq, "dead-letter", deadLetterFn(reason, description))
	if err == nil {
		q.metrics.deadLetteredOnArrival.WithLabelValues(reason).Inc()
		log.Warn("servicebus: dead-lettered a message the ingress marked for the dead-letter queue", "description", relay.Truncate(description, 200))
		return
	}
	if errors.Is(err, relay.ErrLockLost) {
		log.Warn("servicebus: lock lost while dead-lettering a marked message; it will arrive again", "error", err)
		return
	}
	aerr := h.settle(sctx, seq, "abandon", abandonFn)
	log.Error("servicebus: could not dead-letter a message the ingress marked for the dead-letter queue; it will arrive again",
		"error", err, "abandon_error", aerr)
}

// ListDeadLetters browses the dead-letter sub-queue from sequence number
// after+1, in order.
func (q *Queue) ListDeadLetters(ctx context.Context, after int64, limit int) ([]relay.DeadLetter, error) {
	r, err := q.getDLQ()
	if err != nil {
		return nil, err
	}
	if limit <= 0 {
		limit = 100
	}
	from := after + 1
	q.dlqMu.Lock()
	msgs, err := r.PeekMessages(ctx, limit, &azservicebus.PeekMessagesOptions{FromSequenceNumber: &from})
	q.dlqMu.Unlock()
	if err != nil {
		return nil, mapErr("peek dead letters", err)
	}
	out := make([]relay.DeadLetter, 0, len(msgs))
	for _, sm := range msgs {
		out = append(out, deadLetter(sm))
	}
	return out, nil
}
