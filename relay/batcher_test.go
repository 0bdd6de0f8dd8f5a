package relay

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hookbridge/hookbridge/internal/metrictest"
)

// gateSender records every SendBatch and, while its gate is closed, holds
// each call until the gate opens or the commit's context ends.
type gateSender struct {
	mu      sync.Mutex
	batches [][]Message
	fail    error // returned by the next call, then cleared

	gate     chan struct{}
	openOnce sync.Once
	started  chan struct{} // one value per call, sent before it waits
	inFlight atomic.Int32
	maxSeen  atomic.Int32
}

func newGateSender(open bool) *gateSender {
	s := &gateSender{gate: make(chan struct{}), started: make(chan struct{}, 1024)}
	if open {
		s.open()
	}
	return s
}

func (s *gateSender) SendBatch(ctx context.Context, msgs []Message) error {
	n := s.inFlight.Add(1)
	defer s.inFlight.Add(-1)
	for {
		m := s.maxSeen.Load()
		if n <= m || s.maxSeen.CompareAndSwap(m, n) {
			break
		}
	}
	s.started <- struct{}{}
	select {
	case <-s.gate:
	case <-ctx.Done():
		return fmt.Errorf("send: %w", ctx.Err())
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.fail; err != nil {
		s.fail = nil
		return err
	}
	s.batches = append(s.batches, append([]Message(nil), msgs...))
	return nil
}

// open lets held and future commits proceed.
func (s *gateSender) open() { s.openOnce.Do(func() { close(s.gate) }) }

func (s *gateSender) committed() [][]Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([][]Message(nil), s.batches...)
}

func msgs(prefix string, n int) []Message {
	out := make([]Message, n)
	for i := range out {
		out[i] = Message{ID: fmt.Sprintf("%s-%d", prefix, i), Body: []byte(`{}`)}
	}
	return out
}

func newTestBatcher(t *testing.T, s BatchSender, cfg BatchConfig, m *Metrics) *Batcher {
	t.Helper()
	b, err := NewBatcher(s, cfg, m)
	if err != nil {
		t.Fatal(err)
	}
	go b.Run(context.Background())
	t.Cleanup(b.Close)
	if g, ok := s.(*gateSender); ok {
		t.Cleanup(g.open) // runs before Close, so a failed test cannot hang it
	}
	return b
}

// waitQueued waits until n requests are waiting for the next commit. The
// batcher's loop holds one of them while it waits for a commit slot, so n-1
// stay in the channel.
func waitQueued(t *testing.T, b *Batcher, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for len(b.reqs) < n-1 {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d requests queued within 5s", len(b.reqs)+1, n)
		}
		time.Sleep(time.Millisecond)
	}
}

func waitStarted(t *testing.T, s *gateSender) {
	t.Helper()
	select {
	case <-s.started:
	case <-time.After(5 * time.Second):
		t.Fatal("no commit started within 5s")
	}
}

// Requests that arrive while a commit runs are gathered into the next
// commit, each caller gets its commit's result, and a request's messages are
// never split between commits.
func TestBatcherGroupCommit(t *testing.T) {
	s := newGateSender(false)
	b := newTestBatcher(t, s, BatchConfig{}, nil)

	first := make(chan error, 1)
	go func() { first <- b.Publish(context.Background(), msgs("first", 1)) }()
	waitStarted(t, s) // the first commit is now running and held

	const callers = 20
	errs := make(chan error, callers)
	for i := range callers {
		go func() { errs <- b.Publish(context.Background(), msgs(fmt.Sprintf("c%d", i), 3)) }()
	}
	waitQueued(t, b, callers)
	s.open()

	if err := <-first; err != nil {
		t.Fatalf("first publish: %v", err)
	}
	for range callers {
		if err := <-errs; err != nil {
			t.Fatalf("publish: %v", err)
		}
	}
	got := s.committed()
	if len(got) != 2 {
		t.Fatalf("%d commits, want 2 (the held one and one for all %d waiting callers)", len(got), callers)
	}
	if len(got[1]) != callers*3 {
		t.Fatalf("second commit holds %d messages, want %d", len(got[1]), callers*3)
	}
	assertRequestsWhole(t, got)
}

// assertRequestsWhole checks that every request's messages (same ID prefix)
// sit next to each other in one commit and in order.
func assertRequestsWhole(t *testing.T, batches [][]Message) {
	t.Helper()
	where := map[string]int{}
	for bi, batch := range batches {
		for i, m := range batch {
			prefix, idx, _ := strings.Cut(m.ID, "-")
			if prev, ok := where[prefix]; ok && prev != bi {
				t.Fatalf("request %s split across commits %d and %d", prefix, prev, bi)
			}
			where[prefix] = bi
			if idx != "0" {
				want := fmt.Sprintf("%s-%d", prefix, mustAtoi(t, idx)-1)
				if i == 0 || batch[i-1].ID != want {
					t.Fatalf("message %s not right after %s in commit %d", m.ID, want, bi)
				}
			}
		}
	}
}

func mustAtoi(t *testing.T, s string) int {
	t.Helper()
	var n int
	if _, err := fmt.Sscan(s, &n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestBatcherRespectsLimits(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  BatchConfig
		max  func(batch []Message) bool // reports whether batch is over the limit
	}{
		{"messages", BatchConfig{MaxMessages: 5}, func(b []Message) bool { return len(b) > 5 }},
		{"bytes", BatchConfig{MaxBytes: 100}, func(b []Message) bool {
			n := 0
			for i := range b {
				n += b[i].Size()
			}
			return n > 100 && len(b) > 2 // one request (2 messages) may exceed the limit alone
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newGateSender(false)
			b := newTestBatcher(t, s, tc.cfg, nil)
			var wg sync.WaitGroup
			for i := range 40 {
				wg.Go(func() {
					if err := b.Publish(context.Background(), msgs(fmt.Sprintf("r%d", i), 2)); err != nil {
						t.Errorf("publish: %v", err)
					}
				})
			}
			waitStarted(t, s)
			time.Sleep(20 * time.Millisecond) // let the rest queue up behind the held commit
			s.open()
			wg.Wait()
			got := s.committed()
			total := 0
			for i, batch := range got {
				total += len(batch)
				if tc.max(batch) {
					t.Errorf("commit %d has %d messages, over the %s limit", i, len(batch), tc.name)
				}
			}
			if total != 80 {
				t.Fatalf("committed %d messages, want 80", total)
			}
			if len(got) < 3 {
				t.Fatalf("%d commits of 80 messages; the limit cannot have been applied", len(got))
			}
			assertRequestsWhole(t, got)
		})
	}
}

// A request bigger than MaxMessages on its own is committed alone, not
// split and not refused.
func TestBatcherOversizedRequestAlone(t *testing.T) {
	s := newGateSender(true)
	b := newTestBatcher(t, s, BatchConfig{MaxMessages: 4}, nil)
	if err := b.Publish(context.Background(), msgs("big", 10)); err != nil {
		t.Fatal(err)
	}
	got := s.committed()
	if len(got) != 1 || len(got[0]) != 10 {
		t.Fatalf("commits %v, want one commit of 10", len(got))
	}
}

// A failed commit fails every caller in it, and only them.
func TestBatcherFailureReachesEveryCaller(t *testing.T) {
	s := newGateSender(false)
	reg := prometheus.NewRegistry()
	b := newTestBatcher(t, s, BatchConfig{}, NewMetrics(reg))

	held := make(chan error, 1)
	go func() { held <- b.Publish(context.Background(), msgs("held", 1)) }()
	waitStarted(t, s)

	boom := fmt.Errorf("%w: disk full", ErrUnavailable)
	s.mu.Lock()
	s.fail = boom
	s.mu.Unlock()
	const callers = 5
	errs := make(chan error, callers)
	for i := range callers {
		go func() { errs <- b.Publish(context.Background(), msgs(fmt.Sprintf("f%d", i), 1)) }()
	}
	waitQueued(t, b, callers)
	s.open()

	// The held commit takes the failure (it reaches fail first), so its one
	// caller fails and the five gathered behind it succeed.
	if err := <-held; !errors.Is(err, ErrUnavailable) {
		t.Fatalf("held publish: %v, want ErrUnavailable", err)
	}
	for range callers {
		if err := <-errs; err != nil {
			t.Fatalf("later publish: %v", err)
		}
	}
	if got := metrictest.SampleCount(t, reg, "hookbridge_enqueue_duration_seconds", "result", "error"); got != 1 {
		t.Fatalf("error observations %d, want 1", got)
	}
	if got := metrictest.SampleCount(t, reg, "hookbridge_enqueue_duration_seconds", "result", "ok"); got != callers {
		t.Fatalf("ok observations %d, want %d", got, callers)
	}
}

func TestBatcherMaxInFlight(t *testing.T) {
	for _, inFlight := range []int{1, 3} {
		t.Run(fmt.Sprint(inFlight), func(t *testing.T) {
			s := newGateSender(false)
			b := newTestBatcher(t, s, BatchConfig{MaxInFlight: inFlight, MaxMessages: 1}, nil)
			var wg sync.WaitGroup
			for i := range 10 {
				wg.Go(func() {
					if err := b.Publish(context.Background(), msgs(fmt.Sprintf("m%d", i), 1)); err != nil {
						t.Errorf("publish: %v", err)
					}
				})
			}
			for range inFlight {
				waitStarted(t, s)
			}
			// No further commit may start while the allowed ones are held.
			select {
			case <-s.started:
				t.Fatalf("commit %d started with %d allowed in flight", inFlight+1, inFlight)
			case <-time.After(50 * time.Millisecond):
			}
			s.open()
			wg.Wait()
			if got := int(s.maxSeen.Load()); got != inFlight {
				t.Fatalf("at most %d commits ran at once, want %d", got, inFlight)
			}
		})
	}
}

// A commit that outlasts Timeout fails as ErrUnavailable (a retryable
// status for the sender), keeping the deadline in the chain.
func TestBatcherTimeout(t *testing.T) {
	s := newGateSender(false)
	b := newTestBatcher(t, s, BatchConfig{Timeout: 30 * time.Millisecond}, nil)
	err := b.Publish(context.Background(), msgs("slow", 1))
	if !errors.Is(err, ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("publish: %v, want ErrUnavailable wrapping DeadlineExceeded", err)
	}
	if !strings.Contains(err.Error(), "timed out after 30ms") {
		t.Fatalf("error %q does not say how long the commit ran", err)
	}
}

// A caller that gives up gets its context's error at once, and the commit
// still happens: the outcome is unknown to it, not undone.
func TestBatcherCallerGivesUp(t *testing.T) {
	s := newGateSender(false)
	b := newTestBatcher(t, s, BatchConfig{}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	res := make(chan error, 1)
	go func() { res <- b.Publish(ctx, msgs("gone", 1)) }()
	waitStarted(t, s)
	cancel()
	if err := <-res; !errors.Is(err, context.Canceled) {
		t.Fatalf("publish: %v, want context.Canceled", err)
	}
	s.open()
	b.Close()
	if got := s.committed(); len(got) != 1 || got[0][0].ID != "gone-0" {
		t.Fatalf("commits %v, want the abandoned request committed", got)
	}
}

// TestBatcherHoldsUntilCommitEnds: a caller that gave up waiting gets its
// release only once the batcher lets go of its messages (the commit ended);
// one refused before handing them over gets it at once.
func TestBatcherHoldsUntilCommitEnds(t *testing.T) {
	s := newGateSender(false)
	b := newTestBatcher(t, s, BatchConfig{}, nil)
	var released atomic.Int32
	ctx, cancel := context.WithCancel(context.Background())
	res := make(chan error, 1)
	go func() { res <- b.PublishHolding(ctx, msgs("held", 1), func() { released.Add(1) }) }()
	waitStarted(t, s)
	cancel()
	if err := <-res; !errors.Is(err, context.Canceled) {
		t.Fatalf("publish: %v, want context.Canceled", err)
	}
	time.Sleep(20 * time.Millisecond)
	if n := released.Load(); n != 0 {
		t.Fatalf("released %d times while the commit holding the messages still runs", n)
	}
	s.open()
	b.Close()
	if n := released.Load(); n != 1 {
		t.Errorf("released %d times after the commit ended, want 1", n)
	}
	if err := b.PublishHolding(context.Background(), msgs("late", 1), func() { released.Add(1) }); !errors.Is(err, ErrClosed) {
		t.Fatalf("publish after Close: %v, want ErrClosed", err)
	}
	if n := released.Load(); n != 2 {
		t.Errorf("a refused publish released %d times in all, want 2", n)
	}
}

// Close commits every request already accepted, then refuses new ones.
func TestBatcherCloseDrains(t *testing.T) {
	s := newGateSender(false)
	b, err := NewBatcher(s, BatchConfig{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	go b.Run(context.Background())
	const callers = 8
	errs := make(chan error, callers+1)
	go func() { errs <- b.Publish(context.Background(), msgs("a", 1)) }()
	waitStarted(t, s)
	for i := range callers {
		go func() { errs <- b.Publish(context.Background(), msgs(fmt.Sprintf("b%d", i), 1)) }()
	}
	waitQueued(t, b, callers)
	closed := make(chan struct{})
	go func() { b.Close(); close(closed) }()
	select {
	case <-closed:
		t.Fatal("Close returned while a commit was still running")
	case <-time.After(30 * time.Millisecond):
	}
	s.open()
	<-closed
	for range callers + 1 {
		if err := <-errs; err != nil {
			t.Fatalf("publish accepted before Close: %v", err)
		}
	}
	total := 0
	for _, batch := range s.committed() {
		total += len(batch)
	}
	if total != callers+1 {
		t.Fatalf("committed %d messages, want %d", total, callers+1)
	}
	if err := b.Publish(context.Background(), msgs("late", 1)); !errors.Is(err, ErrClosed) {
		t.Fatalf("publish after Close: %v, want ErrClosed", err)
	}
	b.Close() // a second Close is harmless
}

// A commit lingers for more requests only while they come fast enough for
// the wait to gather several; at a slower rate each commits at once. (In a
// synctest bubble: time is the bubble's.)
func TestBatcherLinger(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newGateSender(true)
		b := newTestBatcher(t, s, BatchConfig{Linger: 10 * time.Millisecond}, nil)
		var wg sync.WaitGroup
		for i := range 50 {
			wg.Go(func() {
				if err := b.Publish(context.Background(), msgs(fmt.Sprint("fast", i), 1)); err != nil {
					t.Error(err)
				}
			})
			time.Sleep(time.Millisecond)
		}
		wg.Wait()
		if n := len(s.committed()); n > 15 {
			t.Fatalf("50 requests 1ms apart took %d commits; a 10ms linger should gather about 10 a commit", n)
		}
		for i := range 5 {
			time.Sleep(100 * time.Millisecond)
			start := time.Now()
			if err := b.Publish(context.Background(), msgs(fmt.Sprint("slow", i), 1)); err != nil {
				t.Fatal(err)
			}
			if d := time.Since(start); d != 0 {
				t.Fatalf("request %d, 100ms after the one before, waited %s; it should be committed at once", i, d)
			}
		}
	})
}

// A linger ends early when requests stop coming: four senders that each
// wait for their answer have nothing more to send while a commit waits.
func TestBatcherLingerEndsWhenSendersWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newGateSender(true)
		b := newTestBatcher(t, s, BatchConfig{Linger: 10 * time.Millisecond}, nil)
		start := time.Now()
		var wg sync.WaitGroup
		for w := range 4 {
			wg.Go(func() {
				for i := range 100 {
					if err := b.Publish(context.Background(), msgs(fmt.Sprint(w, "-", i), 1)); err != nil {
						t.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		// Each round of four lingers at most an eighth of the linger once
		// the four are in; a full linger a round would take a second.
		if d := time.Since(start); d > 250*time.Millisecond {
			t.Fatalf("100 rounds of 4 waiting senders took %s with a 10ms linger", d)
		}
	})
}

// Close ends a linger at once: nothing more can come.
func TestBatcherCloseEndsLinger(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newGateSender(true)
		b, err := NewBatcher(s, BatchConfig{Linger: time.Second}, nil)
		if err != nil {
			t.Fatal(err)
		}
		go b.Run(context.Background())
		for i := range 20 { // fast enough to linger
			go b.Publish(context.Background(), msgs(fmt.Sprint("r", i), 1))
			time.Sleep(time.Millisecond)
		}
		start := time.Now()
		b.Close()
		if d := time.Since(start); d != 0 {
			t.Fatalf("Close waited %s for a linger", d)
		}
		if n := len(s.committed()); n == 0 {
			t.Fatal("nothing committed")
		}
	})
}

func TestBatchConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg  BatchConfig
		want string
	}{
		{BatchConfig{MaxMessages: -1}, "batch max messages -1"},
		{BatchConfig{MaxBytes: -1}, "batch max bytes -1"},
		{BatchConfig{Linger: 2 * time.Second}, "batch linger 2s: must be between 0 and 1s"},
		{BatchConfig{Linger: -time.Millisecond}, "batch linger -1ms"},
		{BatchConfig{MaxInFlight: -2}, "batch max in flight -2"},
		{BatchConfig{Timeout: -time.Second}, "batch timeout -1s"},
		{BatchConfig{MaxPending: -1}, "batch max pending -1"},
	} {
		_, err := NewBatcher(newGateSender(true), tc.cfg, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: error %v, want %q", tc.cfg, err, tc.want)
		}
	}
	if err := (BatchConfig{}).Validate(); err != nil {
		t.Fatalf("zero config: %v", err)
	}
}

// tooLargeSender refuses any batch holding a message with the ID big-0, as
// a queue refuses a message over its size limit, and records the others:
// whole (as the embedded queue refuses a batch), or, when partial, sending
// the others and naming big-0 (as Service Bus does).
type tooLargeSender struct {
	gateSender
	partial bool
}

func (s *tooLargeSender) SendBatch(ctx context.Context, msgs []Message) error {
	for i := range msgs {
		if msgs[i].ID == "big-0" {
			if s.partial {
				others := slices.Delete(slices.Clone(msgs), i, i+1)
				if err := s.gateSender.SendBatch(ctx, others); err != nil {
					return err
				}
				return &NotSentError{IDs: []string{"big-0"}, Err: fmt.Errorf("%w: message big-0 exceeds the limit", ErrMessageTooLarge)}
			}
			s.started <- struct{}{}
			<-s.gate
			return fmt.Errorf("%w: message big-0 exceeds the limit", ErrMessageTooLarge)
		}
	}
	return s.gateSender.SendBatch(ctx, msgs)
}

// A message too large for the queue fails its own request only: requests
// gathered into the same commit are committed without it, once each.
func TestBatcherTooLargeFailsOnlyItsRequest(t *testing.T) {
	for _, partial := range []bool{false, true} {
		t.Run(fmt.Sprintf("partial=%v", partial), func(t *testing.T) { testTooLargeFailsOnlyItsRequest(t, partial) })
	}
}

func testTooLargeFailsOnlyItsRequest(t *testing.T, partial bool) {
	s := &tooLargeSender{gateSender: *newGateSender(false), partial: partial}
	b := newTestBatcher(t, s, BatchConfig{}, nil)
	first := make(chan error, 1)
	go func() { first <- b.Publish(context.Background(), msgs("first", 1)) }()
	waitStarted(t, &s.gateSender)

	names := []string{"a", "big", "b", "c"}
	errs := make([]chan error, len(names))
	for i, name := range names {
		errs[i] = make(chan error, 1)
		go func() { errs[i] <- b.Publish(context.Background(), msgs(name, 2)) }()
		waitQueued(t, b, i+1)
	}
	s.open()
	if err := <-first; err != nil {
		t.Fatalf("first: %v", err)
	}
	for i, name := range names {
		err := <-errs[i]
		if name == "big" {
			if !errors.Is(err, ErrMessageTooLarge) {
				t.Errorf("big: %v, want ErrMessageTooLarge", err)
			}
		} else if err != nil {
			t.Errorf("%s, committed with big: %v", name, err)
		}
	}
	stored := map[string]int{}
	for _, batch := range s.committed() {
		for _, m := range batch {
			stored[m.ID]++
		}
	}
	for _, id := range []string{"first-0", "a-0", "a-1", "b-0", "b-1", "c-0", "c-1"} {
		if stored[id] != 1 {
			t.Errorf("%s stored %d times, want once; stored %v", id, stored[id], stored)
		}
	}
	// The refused request's other message: sent by a queue that sends
	// the rest of a batch, not by one that refuses it whole.
	if want := map[bool]int{false: 0, true: 1}[partial]; stored["big-1"] != want || stored["big-0"] != 0 {
		t.Errorf("big-0 stored %d times, big-1 %d, want 0 and %d", stored["big-0"], stored["big-1"], want)
	}
}

// Run owns the batcher's work: when its context ends it commits what was
// accepted and returns, and later requests are refused with ErrClosed.
func TestBatcherRunStopsWithItsContext(t *testing.T) {
	s := newGateSender(false)
	b, err := NewBatcher(s, BatchConfig{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- b.Run(ctx) }()
	published := make(chan error, 1)
	go func() { published <- b.Publish(context.Background(), msgs("accepted", 1)) }()
	waitStarted(t, s)
	if err := b.Run(context.Background()); err == nil {
		t.Error("a second Run returned nil, want an error")
	}
	cancel()
	select {
	case err := <-ran:
		t.Fatalf("Run returned %v while a commit was still running", err)
	case <-time.After(50 * time.Millisecond):
	}
	s.open()
	if err := <-published; err != nil {
		t.Fatalf("the accepted request: %v", err)
	}
	if err := <-ran; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if err := b.Publish(context.Background(), msgs("late", 1)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Publish after Run returned: %v, want ErrClosed", err)
	}
	b.Close() // after Run: returns at once
}
