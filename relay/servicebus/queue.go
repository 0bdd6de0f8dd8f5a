package servicebus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"

	"github.com/hookbridge/hookbridge/relay"
)

// Queue is a Service Bus queue as hookbridge uses it: group commit sends
// MessageBatches to it, workers receive from it (through sessions when the
// queue is session-enabled) and settle, and the dead-letter tooling reads
// its dead-letter sub-queue. It satisfies the relay/relaytest contract.
type Queue struct {
	cfg    Config
	log    *slog.Logger
	client *azservicebus.Client

	mu       sync.Mutex
	sender   *azservicebus.Sender
	receiver *azservicebus.Receiver // non-session queues
	dlq      *azservicebus.Receiver
	pool     *sessionPool
	closed   bool
	closing  chan struct{}
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
	if cfg.ConnectionString != "" {
		client, err = azservicebus.NewClientFromConnectionString(cfg.ConnectionString, opts)
		if err != nil {
			return nil, fmt.Errorf("servicebus: connection string: %w", err)
		}
	} else {
		cred := cfg.Credential
		if cred == nil {
			cred, err = azidentity.NewDefaultAzureCredential(nil)
			if err != nil {
				return nil, fmt.Errorf("servicebus: no Azure credential (managed identity, workload identity, Azure CLI or environment): %w", err)
			}
		}
		client, err = azservicebus.NewClient(cfg.Namespace, cred, opts)
		if err != nil {
			return nil, fmt.Errorf("servicebus: %w", err)
		}
	}
	return &Queue{cfg: cfg, log: log, client: client, closing: make(chan struct{})}, nil
}

// Config returns the effective settings.
func (q *Queue) Config() Config { return q.cfg }

// mapErr turns SDK errors into relay sentinels.
func mapErr(op string, err error) error {
	if err == nil {
		return nil
	}
	var sbErr *azservicebus.Error
	switch {
	case errors.Is(err, azservicebus.ErrMessageTooLarge):
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

func (q *Queue) isClosed() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.closed
}

func (q *Queue) getSender() (*azservicebus.Sender, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
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
// allows. It returns nil once Service Bus acknowledged every batch; a
// message too large to fit any batch fails with relay.ErrMessageTooLarge.
// If a later batch fails after an earlier one succeeded, the error says so;
// a retry is deduplicated by MessageID on a queue with duplicate detection.
func (q *Queue) SendBatch(ctx context.Context, msgs []relay.Message) error {
	s, err := q.getSender()
	if err != nil {
		return err
	}
	sessions := q.cfg.sessions()
	var batch *azservicebus.MessageBatch
	send := func() error {
		if batch == nil || batch.NumMessages() == 0 {
			return nil
		}
		if err := s.SendMessageBatch(ctx, batch, nil); err != nil {
			return mapErr("send", err)
		}
		batch = nil
		return nil
	}
	for i := range msgs {
		m := toMessage(&msgs[i], sessions)
		for attempt := 0; ; attempt++ {
			if batch == nil {
				if batch, err = s.NewMessageBatch(ctx, nil); err != nil {
					return mapErr("create batch", err)
				}
			}
			err := batch.AddMessage(m, nil)
			if err == nil {
				break
			}
			if !errors.Is(err, azservicebus.ErrMessageTooLarge) {
				return mapErr("add to batch", err)
			}
			if batch.NumMessages() == 0 || attempt > 0 {
				return fmt.Errorf("%w: message %q (%d bytes of body) exceeds the queue's message size limit",
					relay.ErrMessageTooLarge, msgs[i].ID, len(msgs[i].Body))
			}
			if err := send(); err != nil {
				return err
			}
		}
	}
	return send()
}

// Ping checks the queue is reachable and readable: a peek of one message.
func (q *Queue) Ping(ctx context.Context) error {
	r, err := q.getDLQ() // any receiver works; the dead-letter one never holds locks
	if err != nil {
		return err
	}
	if _, err := r.PeekMessages(ctx, 1, nil); err != nil {
		return mapErr("ping", err)
	}
	return nil
}

func (q *Queue) getDLQ() (*azservicebus.Receiver, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
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

// Close stops receiving and closes every link and the connection. Messages
// still locked are delivered again when their locks expire.
func (q *Queue) Close() error {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return nil
	}
	q.closed = true
	close(q.closing)
	pool := q.pool
	q.mu.Unlock()
	if pool != nil {
		pool.close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var errs []error
	q.mu.Lock()
	for _, c := range []interface{ Close(context.Context) error }{q.sender, q.receiver, q.dlq} {
		switch v := c.(type) {
		case *azservicebus.Sender:
			if v != nil {
				errs = append(errs, v.Close(ctx))
			}
		case *azservicebus.Receiver:
			if v != nil {
				errs = append(errs, v.Close(ctx))
			}
		}
	}
	q.mu.Unlock()
	errs = append(errs, q.client.Close(ctx))
	return errors.Join(errs...)
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
		return nil, fmt.Errorf("servicebus: message %s was not received from Service Bus", m.ID)
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

// settle runs one settlement and marks the message settled whatever the
// outcome, except a transient failure (the lock may still hold).
func settle(m *relay.Received, op string, fn func(ctx context.Context, s settler, msg *azservicebus.ReceivedMessage) error, ctx context.Context) error {
	h, err := handleOf(m)
	if err != nil {
		return err
	}
	if h.sessionLapsed() {
		h.finish()
		return fmt.Errorf("%s message %d: the session lock expired: %w", op, m.SequenceNumber, relay.ErrLockLost)
	}
	err = mapErr(op, fn(ctx, h.settler(), h.msg))
	if err != nil && h.sessionLapsed() {
		err = fmt.Errorf("%s message %d: the session lock expired: %w", op, m.SequenceNumber, relay.ErrLockLost)
	}
	if err == nil || errors.Is(err, relay.ErrLockLost) {
		h.finish()
	}
	return err
}

// sessionLapsed reports whether h's session lock has expired: no settlement
// can succeed then.
func (h *handle) sessionLapsed() bool {
	return h.session != nil && time.Now().After(h.session.until())
}

// Complete removes a delivered message.
func (q *Queue) Complete(ctx context.Context, m *relay.Received) error {
	return settle(m, "complete", func(ctx context.Context, s settler, msg *azservicebus.ReceivedMessage) error {
		return s.CompleteMessage(ctx, msg, nil)
	}, ctx)
}

// DeadLetter moves a delivered message to the dead-letter sub-queue.
func (q *Queue) DeadLetter(ctx context.Context, m *relay.Received, reason, description string) error {
	description = truncate(description, maxDescription)
	return settle(m, "dead-letter", func(ctx context.Context, s settler, msg *azservicebus.ReceivedMessage) error {
		return s.DeadLetterMessage(ctx, msg, &azservicebus.DeadLetterOptions{Reason: &reason, ErrorDescription: &description})
	}, ctx)
}

// Abandon releases the message for redelivery after delay. Service Bus has
// no delayed abandon, so the message is held (its lock renewed) for the
// delay and then abandoned; on a session queue the session waits too, which
// keeps the call's later events behind it.
func (q *Queue) Abandon(ctx context.Context, m *relay.Received, delay time.Duration) error {
	if delay > 0 {
		if _, err := handleOf(m); err != nil {
			return err
		}
		deadline := time.Now().Add(delay)
		for time.Now().Before(deadline) {
			wait := min(time.Until(deadline), time.Until(m.LockedUntil)/2)
			if wait > 0 {
				select {
				case <-time.After(wait):
				case <-ctx.Done():
					return ctx.Err()
				case <-q.closing:
					return relay.ErrClosed
				}
			}
			if time.Now().Before(deadline) {
				if err := q.RenewLock(ctx, m); err != nil {
					return err
				}
			}
		}
	}
	return settle(m, "abandon", func(ctx context.Context, s settler, msg *azservicebus.ReceivedMessage) error {
		return s.AbandonMessage(ctx, msg, nil)
	}, ctx)
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
			return fmt.Errorf("renew lock of message %d: the session lock expired: %w", m.SequenceNumber, relay.ErrLockLost)
		}
		if err := h.session.renew(ctx); err != nil {
			err = mapErr("renew session lock", err)
			if h.sessionLapsed() && !errors.Is(err, relay.ErrLockLost) {
				err = fmt.Errorf("renew lock of message %d: the session lock expired: %w", m.SequenceNumber, relay.ErrLockLost)
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
// session-enabled queue messages come from up to MaxSessions sessions, one
// message per session at a time: a session's next message is received only
// after the previous one was settled.
func (q *Queue) Receive(ctx context.Context, n int) ([]*relay.Received, error) {
	if n <= 0 {
		n = 1
	}
	if q.isClosed() {
		return nil, relay.ErrClosed
	}
	if q.cfg.sessions() {
		return q.sessionPool().receive(ctx, n)
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
	go func() {
		select {
		case <-q.closing:
			cancel()
		case <-rctx.Done():
		}
	}()
	msgs, err := r.ReceiveMessages(rctx, n, nil)
	if err != nil {
		if q.isClosed() {
			return nil, relay.ErrClosed
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, mapErr("receive", err)
	}
	out := make([]*relay.Received, len(msgs))
	for i, sm := range msgs {
		out[i] = received(sm, &handle{msg: sm, rcv: r, done: make(chan struct{})})
	}
	return out, nil
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
	msgs, err := r.PeekMessages(ctx, limit, &azservicebus.PeekMessagesOptions{FromSequenceNumber: &from})
	if err != nil {
		return nil, mapErr("peek dead letters", err)
	}
	out := make([]relay.DeadLetter, 0, len(msgs))
	for _, sm := range msgs {
		out = append(out, deadLetter(sm))
	}
	return out, nil
}
