package relay

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/hookbridge/hookbridge/schemas"
)

// BatchSender writes messages to a queue durably: when SendBatch returns nil,
// every message is in the queue (or was dropped as a duplicate). A backend may
// split a batch, but must report failure if any part failed.
type BatchSender interface {
	SendBatch(ctx context.Context, msgs []Message) error
}

// BatchConfig bounds group commit.
type BatchConfig struct {
	// MaxMessages is the most messages in one commit. Default 512.
	MaxMessages int
	// MaxBytes is the most bytes (Message.Size) in one commit; a single
	// request bigger than this is committed alone. Default 4 MiB.
	MaxBytes int
	// Linger is how long a commit waits for more requests, when requests
	// arrive fast enough for the wait to gather at least 4 more (at a 2ms
	// linger, above 2,000 requests a second): fewer, larger commits then
	// carry more. Below that rate a commit starts at once, so light load
	// sees no delay; and the wait ends early when requests stop coming
	// (senders waiting for their answers). Requests that arrive while a
	// commit runs always join the next one, so a zero linger still batches
	// under load. Default 0.
	Linger time.Duration
	// MaxInFlight is how many commits may run at once. Default 1, right for
	// SQLite (one writer); Service Bus takes concurrent sends.
	MaxInFlight int
	// Timeout bounds one commit. Default 10s.
	Timeout time.Duration
	// MaxPending is how many requests may wait for a commit before Publish
	// blocks (backpressure). Default 4096.
	MaxPending int
}

func (c *BatchConfig) setDefaults() {
	if c.MaxMessages == 0 {
		c.MaxMessages = 512
	}
	if c.MaxBytes == 0 {
		c.MaxBytes = 4 << 20
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = 1
	}
	if c.Timeout == 0 {
		c.Timeout = 10 * time.Second
	}
	if c.MaxPending == 0 {
		c.MaxPending = 4096
	}
}

// Validate reports the first invalid setting (zero values take defaults).
func (c BatchConfig) Validate() error {
	switch {
	case c.MaxMessages < 0:
		return fmt.Errorf("batch max messages %d: must not be negative", c.MaxMessages)
	case c.MaxBytes < 0:
		return fmt.Errorf("batch max bytes %d: must not be negative", c.MaxBytes)
	case c.Linger < 0 || c.Linger > time.Second:
		return fmt.Errorf("batch linger %s: must be between 0 and 1s", c.Linger)
	case c.MaxInFlight < 0:
		return fmt.Errorf("batch max in flight %d: must not be negative", c.MaxInFlight)
	case c.Timeout < 0:
		return fmt.Errorf("batch timeout %s: must not be negative", c.Timeout)
	case c.MaxPending < 0:
		return fmt.Errorf("batch max pending %d: must not be negative", c.MaxPending)
	}
	return nil
}

type request struct {
	msgs    []Message
	size    int
	start   time.Time
	done    chan error // buffered 1: the committer never blocks on a gone caller
	release func()     // see PublishHolding; nil if none
}

// Batcher coalesces concurrent Publish calls into few queue writes (group
// commit): each caller waits for the commit that holds its messages and gets
// that commit's result. A request's messages always go into one commit.
// Run does the committing; Publish waits while it is not running.
type Batcher struct {
	sender  BatchSender
	cfg     BatchConfig
	metrics *Metrics

	reqs chan *request
	mu   sync.RWMutex // guards closed against concurrent Publish sends on reqs
	stop chan struct{}
	done chan struct{} // closed when Run returns

	closed, running bool
	commits         sync.WaitGroup
}

// NewBatcher returns a batcher feeding sender; Run runs it. metrics may be
// nil.
func NewBatcher(sender BatchSender, cfg BatchConfig, metrics *Metrics) (*Batcher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	return &Batcher{
		sender:  sender,
		cfg:     cfg,
		metrics: metrics,
		reqs:    make(chan *request, cfg.MaxPending),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}, nil
}

// Run commits what Publish hands it until ctx ends or Close is called;
// then it stops accepting requests (Publish returns ErrClosed), commits
// those already accepted, waits for every commit to finish and returns nil.
// It returns an error only if called twice.
func (b *Batcher) Run(ctx context.Context) error {
	b.mu.Lock()
	if b.running {
		b.mu.Unlock()
		return errors.New("relay: batcher Run called twice")
	}
	b.running = true
	b.mu.Unlock()
	defer close(b.done)
	stop := context.AfterFunc(ctx, b.shutdown)
	defer stop()
	b.loop()
	b.commits.Wait()
	return nil
}

// Publish commits msgs and returns once the queue has them (nil) or the
// commit failed. If ctx ends first, Publish returns ctx's error: the messages
// may or may not have been committed, so the caller must treat the outcome as
// unknown (a retry is deduplicated by MessageID).
func (b *Batcher) Publish(ctx context.Context, msgs []Message) error {
	return b.PublishHolding(ctx, msgs, nil)
}

// PublishHolding is Publish, and calls release (if not nil) once the
// batcher no longer holds msgs: when Publish returns without having handed
// them over, or else when their commit ends, which may be after a Publish
// cut short by ctx returned. A caller bounding the memory of requests in
// progress releases their share there, so that requests whose callers gave
// up still count while the queue is stalled.
func (b *Batcher) PublishHolding(ctx context.Context, msgs []Message, release func()) error {
	if len(msgs) == 0 {
		if release != nil {
			release()
		}
		return nil
	}
	r := &request{msgs: msgs, start: time.Now(), done: make(chan error, 1), release: release}
	for i := range msgs {
		r.size += msgs[i].Size()
	}
	b.mu.RLock()
	if b.closed {
		b.mu.RUnlock()
		if release != nil {
			release()
		}
		return ErrClosed
	}
	select {
	case b.reqs <- r:
		b.mu.RUnlock()
	case <-ctx.Done():
		b.mu.RUnlock()
		if release != nil {
			release()
		}
		return fmt.Errorf("waiting for the queue: %w", ctx.Err())
	}
	select {
	case err := <-r.done:
		b.metrics.observePublish(time.Since(r.start), err)
		return err
	case <-ctx.Done():
		return fmt.Errorf("waiting for the queue: %w", ctx.Err())
	}
}

// Close stops accepting requests and, if Run is running, waits for it to
// commit those already accepted and return. It is safe to call more than
// once.
func (b *Batcher) Close() {
	b.shutdown()
	b.mu.RLock()
	running := b.running
	b.mu.RUnlock()
	if running {
		<-b.done
	}
}

// shutdown stops accepting requests; Run's loop drains what was accepted.
func (b *Batcher) shutdown() {
	b.mu.Lock()
	if !b.closed {
		b.closed = true
		close(b.stop)
	}
	b.mu.Unlock()
}

// lingerCompany is how many more requests a linger must be expected to
// gather, at the recent arrival rate, for a commit to wait for them (see
// BatchConfig.Linger); a linger ends early once no request came for
// lingerQuiet gaps (at least an eighth of the linger).
const (
	lingerCompany = 4
	lingerQuiet   = 3
)

func (b *Batcher) loop() {
	// Long-lived committers, one per slot: a commit runs deep in the
	// sender (SQLite's interpreter), and a fresh goroutine per commit would
	// grow its stack from scratch every time.
	type work struct {
		batch       []*request
		count, size int
	}
	slots := make(chan struct{}, b.cfg.MaxInFlight)
	works := make(chan work)
	for range b.cfg.MaxInFlight {
		b.commits.Go(func() {
			for w := range works {
				b.commit(w.batch, w.count, w.size)
				<-slots
			}
		})
	}
	defer close(works)
	var carry *request // a request that did not fit the previous batch
	// The recent gap between requests, from when each was published: a
	// moving average weighing the newest gap an eighth; -1 until measured.
	gap, prev := time.Duration(-1), time.Time{}
	arrived := func(r *request) {
		d := max(r.start.Sub(prev), 0) // received out of order: published at once
		switch {
		case prev.IsZero():
		case gap < 0:
			gap = d
		default:
			gap += (d - gap) / 8
		}
		if r.start.After(prev) {
			prev = r.start
		}
	}
	for {
		first := carry
		carry = nil
		if first == nil {
			select {
			case first = <-b.reqs:
				arrived(first)
			case <-b.stop:
				// Publish can no longer send (closed is set under mu), so
				// draining what is buffered empties reqs for good.
				select {
				case first = <-b.reqs:
					arrived(first)
				default:
					return // Run waits for running commits
				}
			}
		}
		// Wait for a commit slot before gathering: requests that arrive
		// while all slots are busy join this batch.
		slots <- struct{}{}
		batch := []*request{first}
		count, size := len(first.msgs), first.size
		// Gather what is waiting. If requests are coming fast enough that
		// a linger would gather several more, wait for them: fewer, larger
		// commits carry more (each costs a transaction and an fsync whatever
		// its size). At a slower rate a commit starts at once, so light load
		// sees no delay. A linger also ends once requests stop coming for a
		// while: senders that each wait for their answer before sending
		// again have nothing more to send until this commit ends.
		var end time.Time
		var timer *time.Timer
	gather:
		for count < b.cfg.MaxMessages && size < b.cfg.MaxBytes {
			var r *request
			select {
			case r = <-b.reqs:
			default:
				if end.IsZero() {
					if b.cfg.Linger == 0 || gap < 0 || b.cfg.Linger < lingerCompany*gap {
						break gather
					}
					end = time.Now().Add(b.cfg.Linger)
				}
				wait := min(time.Until(end), max(lingerQuiet*gap, b.cfg.Linger/8))
				if wait <= 0 {
					break gather
				}
				if timer == nil {
					timer = time.NewTimer(wait)
				} else {
					timer.Reset(wait)
				}
				select {
				case r = <-b.reqs:
				case <-timer.C:
					break gather
				case <-b.stop:
					break gather // nothing more can come; Run drains what is buffered
				}
			}
			arrived(r)
			if count+len(r.msgs) > b.cfg.MaxMessages || size+r.size > b.cfg.MaxBytes {
				carry = r
				break
			}
			batch = append(batch, r)
			count += len(r.msgs)
			size += r.size
		}
		if timer != nil {
			timer.Stop()
		}
		works <- work{batch, count, size}
	}
}

func (b *Batcher) commit(batch []*request, count, size int) {
	msgs := batch[0].msgs
	if len(batch) > 1 {
		msgs = make([]Message, 0, count)
		for _, r := range batch {
			msgs = append(msgs, r.msgs...)
		}
	}
	// The commit outlives any one caller: it is not tied to a request's
	// context, only bounded by the configured timeout.
	ctx, cancel := context.WithTimeout(context.Background(), b.cfg.Timeout)
	start := time.Now()
	err := b.sender.SendBatch(ctx, msgs)
	cancel()
	if err != nil && errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, ErrUnavailable) {
		err = fmt.Errorf("%w: commit timed out after %s: %w", ErrUnavailable, b.cfg.Timeout, err)
	}
	b.metrics.observeCommit(len(msgs), size, time.Since(start), err)
	var notSent *NotSentError
	if len(batch) > 1 && errors.As(err, &notSent) {
		// Every message but the named ones was sent: only the requests
		// holding one of those failed.
		for _, r := range batch {
			var rerr error
			if slices.ContainsFunc(r.msgs, func(m Message) bool { return slices.Contains(notSent.IDs, m.ID) }) {
				rerr = err
			}
			r.done <- rerr
			if r.release != nil {
				r.release()
			}
		}
		return
	}
	if len(batch) > 1 && errors.Is(err, ErrMessageTooLarge) {
		// The queue refused some request's message as too large; the
		// refusal is final for that request's sender only. Commit every
		// request alone, so the others are stored (parts a backend had
		// already sent are dropped as duplicates by MessageID).
		for _, r := range batch {
			b.commit([]*request{r}, len(r.msgs), r.size)
		}
		return
	}
	for _, r := range batch {
		r.done <- err
		if r.release != nil {
			r.release()
		}
	}
}

// PublishEvents maps events to messages (see NewMessage) and publishes them
// as one request: all are committed together, or the call fails.
func (b *Batcher) PublishEvents(ctx context.Context, events []schemas.Event) error {
	msgs := make([]Message, len(events))
	for i := range events {
		m, err := NewMessage(&events[i])
		if err != nil {
			return err
		}
		msgs[i] = m
	}
	return b.Publish(ctx, msgs)
}
