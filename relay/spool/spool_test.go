package spool_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hookbridge/hookbridge/internal/metrictest"
	"github.com/hookbridge/hookbridge/internal/testlog"
	"github.com/hookbridge/hookbridge/internal/testrun"
	"github.com/hookbridge/hookbridge/internal/testwait"
	"github.com/hookbridge/hookbridge/relay"
	"github.com/hookbridge/hookbridge/relay/spool"
	"github.com/hookbridge/hookbridge/relay/sqlite"
)

// primary is a fake Service Bus: it runs fn (if set) on each send, and
// keeps what it accepted in order, dropping IDs it has seen (duplicate
// detection) and counting them.
type primary struct {
	mu       sync.Mutex
	fn       func(ctx context.Context, msgs []relay.Message) error
	accepted []relay.Message
	seen     map[string]int
	sends    []string // the IDs of every send attempt, in order, joined
}

func (p *primary) set(fn func(ctx context.Context, msgs []relay.Message) error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fn = fn
}

func (p *primary) SendBatch(ctx context.Context, msgs []relay.Message) error {
	p.mu.Lock()
	fn := p.fn
	p.sends = append(p.sends, ids(msgs))
	p.mu.Unlock()
	if fn != nil {
		if err := fn(ctx, msgs); err != nil {
			return err
		}
	}
	p.accept(msgs)
	return nil
}

func (p *primary) accept(msgs []relay.Message) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.seen == nil {
		p.seen = map[string]int{}
	}
	for _, m := range msgs {
		if p.seen[m.ID]++; p.seen[m.ID] == 1 {
			p.accepted = append(p.accepted, m)
		}
	}
}

// order returns the accepted IDs of session key, in order.
func (p *primary) order(key string) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, m := range p.accepted {
		if m.SessionID == key {
			out = append(out, m.ID)
		}
	}
	return out
}

func (p *primary) has(id string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.seen[id] > 0
}

func (p *primary) times(id string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.seen[id]
}

func (p *primary) attempted(id string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, s := range p.sends {
		if slices.Contains(strings.Split(s, ","), id) {
			return true
		}
	}
	return false
}

func ids(msgs []relay.Message) string {
	out := make([]string, len(msgs))
	for i := range msgs {
		out[i] = msgs[i].ID
	}
	return strings.Join(out, ",")
}

func contains(msgs []relay.Message, id string) bool {
	for i := range msgs {
		if msgs[i].ID == id {
			return true
		}
	}
	return false
}

var errDown = fmt.Errorf("%w: servicebus send: connection refused", relay.ErrUnavailable)

// failAll makes every send fail as an unreachable Service Bus does.
func failAll(context.Context, []relay.Message) error { return errDown }

func msg(id, key string) relay.Message {
	return relay.Message{ID: id, SessionID: key, Subject: "t", ContentType: "application/cloudevents+json", Body: []byte(`{"id":"` + id + `"}`)}
}

// harness is a spool on a real SQLite store with its forwarder running.
type harness struct {
	t     *testing.T
	sp    *spool.Spool
	store *sqlite.Queue
	path  string
	p     *primary
	reg   *prometheus.Registry
	logs  *testlog.Buffer
	stop  func()
}

// fast are settings that keep the tests quick.
func fast(cfg spool.Config) spool.Config {
	if cfg.After == 0 {
		cfg.After = 200 * time.Millisecond
	}
	if cfg.SendTimeout == 0 {
		cfg.SendTimeout = time.Second
	}
	if cfg.RetryMin == 0 {
		cfg.RetryMin = 5 * time.Millisecond
	}
	if cfg.RetryMax == 0 {
		cfg.RetryMax = 20 * time.Millisecond
	}
	if cfg.Cooldown == 0 {
		cfg.Cooldown = time.Millisecond
	}
	if cfg.Poll == 0 {
		cfg.Poll = 50 * time.Millisecond
	}
	return cfg
}

func openStore(t *testing.T, path string, lock time.Duration) *sqlite.Queue {
	t.Helper()
	q, err := sqlite.Open(context.Background(), sqlite.Config{Path: path, LockDuration: lock, MaxDeliveryCount: 10000}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return q
}

// start runs a spool over the store at path (a new one if empty).
func start(t *testing.T, p *primary, cfg spool.Config, path string, lock time.Duration) *harness {
	t.Helper()
	if path == "" {
		path = filepath.Join(t.TempDir(), "spool.db")
	}
	h := &harness{t: t, path: path, p: p, reg: prometheus.NewRegistry(), logs: &testlog.Buffer{}}
	h.store = openStore(t, path, lock)
	cfg = fast(cfg)
	cfg.Registerer = h.reg
	cfg.Logger = slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	sp, err := spool.New(p, h.store, cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.sp = sp
	stopRun := testrun.Start(t, sp.Run)
	var once sync.Once
	h.stop = func() {
		once.Do(func() {
			if err := stopRun(); err != nil {
				t.Errorf("Run: %v", err)
			}
			if err := h.store.Close(); err != nil {
				t.Errorf("close store: %v", err)
			}
		})
	}
	t.Cleanup(h.stop)
	return h
}

func (h *harness) send(msgs ...relay.Message) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return h.sp.SendBatch(ctx, msgs)
}

func (h *harness) mustSend(msgs ...relay.Message) {
	h.t.Helper()
	if err := h.send(msgs...); err != nil {
		h.t.Fatalf("send %s: %v", ids(msgs), err)
	}
}

// counts returns the store's active and dead-lettered messages.
func (h *harness) counts() (int64, int64) {
	h.t.Helper()
	a, d, err := h.store.Counts(context.Background())
	if err != nil {
		h.t.Fatal(err)
	}
	return a, d
}

// drained waits until the spool reports it is empty and direct.
func (h *harness) drained() {
	h.t.Helper()
	testwait.Until(h.t, 10*time.Second, "the spool drained", func() bool {
		st := h.sp.State()
		return st.Mode == spool.ModeDirect && st.Messages == 0
	})
	if a, _ := h.counts(); a != 0 {
		h.t.Errorf("the store still holds %d messages after draining", a)
	}
}

func (h *harness) spooled(reason string) float64 {
	return metrictest.Value(h.t, h.reg, "hookbridge_spool_spooled_total", "reason", reason)
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		edit func(*spool.Config)
		want string
	}{
		{"defaults", func(*spool.Config) {}, ""},
		{"negative after", func(c *spool.Config) { c.After = -time.Second }, "after"},
		{"after too long", func(c *spool.Config) { c.After = 2 * time.Minute }, "after"},
		{"negative max", func(c *spool.Config) { c.MaxMessages = -1 }, "max messages"},
		{"huge forward batch", func(c *spool.Config) { c.ForwardBatch = 20_000 }, "forward batch"},
		{"negative send timeout", func(c *spool.Config) { c.SendTimeout = -1 }, "send timeout"},
		{"retry max below min", func(c *spool.Config) { c.RetryMin, c.RetryMax = time.Second, time.Millisecond }, "retry"},
		{"negative cooldown", func(c *spool.Config) { c.Cooldown = -1 }, "cooldown"},
		{"negative poll", func(c *spool.Config) { c.Poll = -1 }, "poll"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var cfg spool.Config
			tt.edit(&cfg)
			err := cfg.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("valid config refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tt.want)
			}
			if _, err := spool.New(&primary{}, nil, cfg); err == nil {
				t.Error("New accepted it")
			}
		})
	}
}

func TestDirectWhilePrimaryTakesSends(t *testing.T) {
	t.Parallel()
	h := start(t, &primary{}, spool.Config{}, "", 0)
	h.mustSend(msg("a1", "k1"), msg("b1", "k2"))
	h.mustSend(msg("a2", "k1"), msg("n1", ""))
	if got := h.p.order("k1"); !slices.Equal(got, []string{"a1", "a2"}) {
		t.Errorf("k1 order %v", got)
	}
	if a, _ := h.counts(); a != 0 {
		t.Errorf("the store holds %d messages; nothing should be spooled", a)
	}
	for _, r := range []string{"failed", "slow", "down", "order", "restart"} {
		if n := h.spooled(r); n != 0 {
			t.Errorf("spooled{%s} = %v", r, n)
		}
	}
	if st := h.sp.State(); st.Mode != spool.ModeDirect || st.Messages != 0 {
		t.Errorf("state %+v", st)
	}
	if err := h.sp.Ready(context.Background()); err != nil {
		t.Errorf("not ready: %v", err)
	}
}

// TestSpoolsAndForwards: a failing or slow primary sends the events to the
// spool; SendBatch still succeeds; once the primary is back the forwarder
// delivers them in order and the spool drains, with one log line at each
// end.
func TestSpoolsAndForwards(t *testing.T) {
	t.Parallel()
	slow := func(ctx context.Context, _ []relay.Message) error {
		<-ctx.Done()
		return ctx.Err() // not wrapped: the spool must notice the budget itself
	}
	for _, tt := range []struct {
		reason string
		fn     func(context.Context, []relay.Message) error
	}{{"failed", failAll}, {"slow", slow}} {
		t.Run(tt.reason, func(t *testing.T) {
			t.Parallel()
			p := &primary{}
			p.set(tt.fn)
			h := start(t, p, spool.Config{SendTimeout: 100 * time.Millisecond}, "", 0)
			h.mustSend(msg("a1", "k1"), msg("b1", "k2"))
			h.mustSend(msg("a2", "k1"), msg("n1", ""))
			if a, _ := h.counts(); a != 4 {
				t.Fatalf("the store holds %d messages, want 4", a)
			}
			if st := h.sp.State(); st.Mode != spool.ModeSpooling || st.Messages != 4 || st.LastError == "" || st.FailingSince == nil {
				t.Errorf("state while failing: %+v", st)
			}
			if err := h.sp.Ready(context.Background()); err != nil {
				t.Errorf("not ready while spooling with room: %v", err)
			}
			if n := h.spooled(tt.reason); n < 2 {
				t.Errorf("spooled{%s} = %v, want at least the first commit's 2", tt.reason, n)
			}
			if n := h.spooled(tt.reason) + h.spooled("down") + h.spooled("order"); n != 4 {
				t.Errorf("spooled{%s}+{down}+{order} = %v, want 4", tt.reason, n)
			}
			testwait.Until(t, 10*time.Second, "the forwarder failed once", func() bool {
				return metrictest.Value(t, h.reg, "hookbridge_spool_forward_failures_total") > 0
			})
			p.set(nil)
			h.drained()
			if got := h.p.order("k1"); !slices.Equal(got, []string{"a1", "a2"}) {
				t.Errorf("k1 order %v", got)
			}
			for _, id := range []string{"b1", "n1"} {
				if !h.p.has(id) {
					t.Errorf("%s never forwarded", id)
				}
			}
			if n := metrictest.Value(t, h.reg, "hookbridge_spool_forwarded_total"); n != 4 {
				t.Errorf("forwarded_total = %v", n)
			}
			logs := h.logs.String()
			if strings.Count(logs, `msg="spooling:`) != 1 || strings.Count(logs, `msg="spool drained`) != 1 {
				t.Errorf("want one spooling and one drained line:\n%s", logs)
			}
			// Back to direct: a new event of k1 is not spooled.
			before := h.spooled("order")
			h.mustSend(msg("a3", "k1"))
			if h.spooled("order") != before {
				t.Error("a3 was spooled after the spool drained")
			}
			if a, _ := h.counts(); a != 0 {
				t.Errorf("store holds %d", a)
			}
		})
	}
}

func TestTooLargeAndPermanentErrorsAreNotSpooled(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		err  error
	}{
		{"too large", fmt.Errorf("%w: message m is 300000 bytes", relay.ErrMessageTooLarge)},
		{"closed", relay.ErrClosed},
		{"permanent", errors.New("servicebus: message has no ID")},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p := &primary{}
			p.set(func(context.Context, []relay.Message) error { return tt.err })
			h := start(t, p, spool.Config{}, "", 0)
			if err := h.send(msg("m", "k")); !errors.Is(err, tt.err) {
				t.Fatalf("err = %v, want %v", err, tt.err)
			}
			if a, _ := h.counts(); a != 0 {
				t.Errorf("the store holds %d messages; none should be spooled", a)
			}
		})
	}
}

// TestTooLargeKeepsTheSpooledPart: one request carries an event of a call
// that has events in the spool (bound for the spool) and another call's
// event too large for Service Bus (sent directly, refused for good): the
// request fails with ErrMessageTooLarge, and the first event is still
// committed to the spool and forwarded.
func TestTooLargeKeepsTheSpooledPart(t *testing.T) {
	t.Parallel()
	p := &primary{}
	p.set(failAll)
	h := start(t, p, spool.Config{SendTimeout: 10 * time.Second}, "", 0)
	h.mustSend(msg("a1", "k")) // spooled: Service Bus is down
	release := make(chan struct{})
	p.set(func(ctx context.Context, msgs []relay.Message) error {
		if contains(msgs, "a1") { // the forwarder waits, so k keeps events in the spool
			select {
			case <-release:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if contains(msgs, "big") {
			return fmt.Errorf("%w: 1 of %d messages exceed the limit (the others were sent)", relay.ErrMessageTooLarge, len(msgs))
		}
		return nil
	})
	time.Sleep(20 * time.Millisecond) // past the cool-down after the failure
	if err := h.send(msg("a2", "k"), msg("big", "other")); !errors.Is(err, relay.ErrMessageTooLarge) {
		t.Fatalf("err = %v, want ErrMessageTooLarge", err)
	}
	close(release)
	testwait.Until(t, 10*time.Second, "a2 forwarded after a1", func() bool { return p.has("a2") })
}

// TestSlowServiceBusStillDrains: after a restart over leftovers, Service
// Bus takes events slowly, so that forwarding a whole batch runs out of
// SendTimeout: the forwarder sends smaller batches and the spool drains.
func TestSlowServiceBusStillDrains(t *testing.T) {
	t.Parallel()
	p := &primary{}
	p.set(failAll)
	cfg := spool.Config{SendTimeout: 300 * time.Millisecond, ForwardBatch: 64}
	h := start(t, p, cfg, "", 0)
	for i := range 64 {
		h.mustSend(msg(fmt.Sprintf("m%d", i), fmt.Sprintf("call%d", i)))
	}
	h.stop()
	p2 := &primary{}
	p2.set(func(ctx context.Context, msgs []relay.Message) error {
		for range msgs { // 10ms an event: 64 take 640ms, over the 300ms allowed
			select {
			case <-time.After(10 * time.Millisecond):
			case <-ctx.Done():
				return fmt.Errorf("%w: %w", relay.ErrUnavailable, ctx.Err())
			}
		}
		return nil
	})
	h = start(t, p2, cfg, h.path, 0)
	testwait.Until(t, 30*time.Second, "the spool drained", func() bool {
		a, _ := h.counts()
		return a == 0
	})
	for i := range 64 {
		if id := fmt.Sprintf("m%d", i); !p2.has(id) {
			t.Errorf("%s not forwarded", id)
		}
	}
}

// TestEarlierFailureHoldsBackLaterCommit is the race of concurrent group
// commits: commit A (call k) is in flight to the primary and will fail;
// commit B of the same call, started later, must not reach the primary
// before A's outcome is known, or B would be delivered before A's events,
// which the forwarder sends later. Other calls are not held back.
func TestEarlierFailureHoldsBackLaterCommit(t *testing.T) {
	t.Parallel()
	p := &primary{}
	inA, releaseA := make(chan struct{}), make(chan struct{})
	p.set(func(ctx context.Context, msgs []relay.Message) error {
		if contains(msgs, "a1") {
			select {
			case <-inA:
			default:
				close(inA)
				select {
				case <-releaseA:
				case <-ctx.Done():
				}
				return errDown
			}
		}
		return nil
	})
	h := start(t, p, spool.Config{After: 5 * time.Second}, "", 0)
	errs := make(chan error, 2)
	go func() { errs <- h.send(msg("a1", "k"), msg("x1", "other")) }()
	<-inA
	go func() { errs <- h.send(msg("a2", "k")) }()
	h.mustSend(msg("y1", "third")) // another call goes straight through meanwhile
	if !h.p.has("y1") {
		t.Fatal("a commit of another call was held back")
	}
	time.Sleep(50 * time.Millisecond)
	if h.p.attempted("a2") {
		t.Fatal("a2 reached the primary while the earlier commit of its call was still in flight")
	}
	close(releaseA)
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatalf("send: %v", err)
		}
	}
	h.drained()
	if got := h.p.order("k"); !slices.Equal(got, []string{"a1", "a2"}) {
		t.Errorf("call k delivered as %v, want [a1 a2]", got)
	}
	if !h.p.has("x1") {
		t.Error("x1 lost")
	}
}

// TestUnknownOutcomeKeepsOrder: a direct send gets no answer within the
// budget, yet the primary did take it (it arrives late). Its events are
// spooled; the next commit of the call waits and follows them through the
// spool; the copy forwarded later is dropped as a duplicate. Nothing is
// lost and the call's order holds.
func TestUnknownOutcomeKeepsOrder(t *testing.T) {
	t.Parallel()
	p := &primary{}
	var once sync.Once
	inA := make(chan struct{})
	p.set(func(ctx context.Context, msgs []relay.Message) error {
		if !contains(msgs, "a1") {
			return nil
		}
		late := false
		once.Do(func() { late = true })
		if !late {
			return nil
		}
		close(inA)
		<-ctx.Done()
		p.accept(msgs) // the broker took it after all
		return fmt.Errorf("%w: servicebus send: %w", relay.ErrUnavailable, ctx.Err())
	})
	h := start(t, p, spool.Config{After: 100 * time.Millisecond}, "", 0)
	errs := make(chan error, 1)
	go func() { errs <- h.send(msg("a1", "k")) }()
	<-inA
	h.mustSend(msg("a2", "k"))
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	if n := h.spooled("slow"); n != 1 {
		t.Errorf("spooled{slow} = %v, want 1", n)
	}
	h.drained()
	if got := h.p.order("k"); !slices.Equal(got, []string{"a1", "a2"}) {
		t.Errorf("call k delivered as %v, want [a1 a2]", got)
	}
	if n := h.p.times("a1"); n != 2 {
		t.Errorf("a1 reached the primary %d times, want 2 (the late direct send and the forwarded copy, dropped by duplicate detection)", n)
	}
}

// TestCallWithSpooledEventsStaysInSpool: once Service Bus is back, a call
// whose earlier events are still in the spool keeps going through it, while
// other calls go direct; once its events are forwarded, it goes direct too.
func TestCallWithSpooledEventsStaysInSpool(t *testing.T) {
	t.Parallel()
	p := &primary{}
	p.set(failAll)
	h := start(t, p, spool.Config{SendTimeout: 10 * time.Second}, "", 0) // the held-up forward must not time out
	h.mustSend(msg("a1", "k"))
	release := make(chan struct{})
	p.set(func(ctx context.Context, msgs []relay.Message) error {
		if contains(msgs, "a1") { // the forwarder's send, held up
			select {
			case <-release:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	})
	time.Sleep(10 * time.Millisecond) // past the cooldown
	h.mustSend(msg("a2", "k"))
	h.mustSend(msg("b1", "other"))
	if h.p.attempted("a2") {
		t.Fatal("a2 went to the primary while a1 was still in the spool")
	}
	if !h.p.has("b1") {
		t.Fatal("another call's event was not sent directly")
	}
	if n := h.spooled("order"); n != 1 {
		t.Errorf("spooled{order} = %v, want 1", n)
	}
	close(release)
	h.drained()
	if got := h.p.order("k"); !slices.Equal(got, []string{"a1", "a2"}) {
		t.Errorf("call k delivered as %v", got)
	}
	h.mustSend(msg("a3", "k"))
	if n := h.spooled("order"); n != 1 {
		t.Error("a3 was spooled after k's events were all forwarded")
	}
}

// TestFullSpool: past MaxMessages the spool refuses with ErrFull (503),
// readiness fails, and once Service Bus is back it drains and takes events
// again.
func TestFullSpool(t *testing.T) {
	t.Parallel()
	p := &primary{}
	p.set(failAll)
	h := start(t, p, spool.Config{MaxMessages: 3, Cooldown: time.Minute}, "", 0)
	h.mustSend(msg("a1", "k1"), msg("a2", "k1"))
	h.mustSend(msg("b1", "k2"))
	err := h.send(msg("c1", "k3"))
	if !errors.Is(err, spool.ErrFull) || !errors.Is(err, relay.ErrUnavailable) {
		t.Fatalf("err = %v, want ErrFull wrapping ErrUnavailable", err)
	}
	if !strings.Contains(err.Error(), "3 of at most 3") {
		t.Errorf("the error does not say how full: %v", err)
	}
	if err := h.sp.Ready(context.Background()); err == nil || !strings.Contains(err.Error(), "full") {
		t.Errorf("Ready = %v, want a full spool reported", err)
	}
	if n := metrictest.Value(t, h.reg, "hookbridge_spool_refused_total", "reason", "full"); n != 1 {
		t.Errorf("refused{full} = %v", n)
	}
	p.set(nil)
	h.drained()
	h.mustSend(msg("c1", "k3"))
	if err := h.sp.Ready(context.Background()); err != nil {
		t.Errorf("not ready after draining: %v", err)
	}
	if got := h.p.order("k1"); !slices.Equal(got, []string{"a1", "a2"}) {
		t.Errorf("k1 order %v", got)
	}
}

// TestRestartWithLeftovers: a spool left non-empty by an earlier run holds
// calls we do not know; every call's events go through the spool until
// those are forwarded, then direct again.
func TestRestartWithLeftovers(t *testing.T) {
	t.Parallel()
	p := &primary{}
	p.set(failAll)
	first := start(t, p, spool.Config{}, "", time.Minute)
	first.mustSend(msg("a1", "k1"), msg("b1", "k2"))
	first.stop() // the forwarder releases what it held

	release := make(chan struct{})
	p.set(func(ctx context.Context, msgs []relay.Message) error {
		if contains(msgs, "a1") {
			select {
			case <-release:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	})
	h := start(t, p, spool.Config{SendTimeout: 10 * time.Second}, first.path, time.Minute)
	h.mustSend(msg("a2", "k1"), msg("n1", "")) // k1 is in the spool, though nobody told us
	h.mustSend(msg("c1", "k3"))                // k3 is not, but we cannot know yet
	if h.p.attempted("a2") || h.p.attempted("c1") {
		t.Fatal("an event went to the primary while the spool's calls were unknown")
	}
	if !h.p.has("n1") {
		t.Error("an event without a call was held back")
	}
	if st := h.sp.State(); !st.Recovering {
		t.Errorf("state %+v, want recovering", st)
	}
	if n := h.spooled("restart"); n != 2 {
		t.Errorf("spooled{restart} = %v, want 2", n)
	}
	close(release)
	h.drained()
	if got := h.p.order("k1"); !slices.Equal(got, []string{"a1", "a2"}) {
		t.Errorf("k1 delivered as %v, want [a1 a2]", got)
	}
	for _, id := range []string{"b1", "c1"} {
		if h.p.times(id) != 1 {
			t.Errorf("%s reached the primary %d times", id, h.p.times(id))
		}
	}
	h.mustSend(msg("c2", "k3"))
	if n := h.spooled("restart") + h.spooled("order"); n != 2 {
		t.Error("an event was spooled after the leftovers were forwarded")
	}
	if !strings.Contains(h.logs.String(), "left by an earlier run") {
		t.Errorf("no log line about the leftovers:\n%s", h.logs.String())
	}
}

// restartWithLeftovers leaves old1 (call k1) and old2 (k2) in a spool while
// the primary is down, restarts on it, and sends new-k1, which is spooled
// behind them. The primary then holds the leftovers' forwarding until
// oldHeld is closed, and new-k1's until newHeld is.
func restartWithLeftovers(t *testing.T) (h *harness, oldHeld, newHeld chan struct{}) {
	t.Helper()
	p := &primary{}
	p.set(failAll)
	first := start(t, p, spool.Config{}, "", time.Minute)
	first.mustSend(msg("old1", "k1"), msg("old2", "k2"))
	first.stop()

	oldHeld, newHeld = make(chan struct{}), make(chan struct{})
	hold := func(ctx context.Context, c chan struct{}) error {
		select {
		case <-c:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	p.set(func(ctx context.Context, msgs []relay.Message) error {
		switch {
		case contains(msgs, "old1"):
			return hold(ctx, oldHeld)
		case contains(msgs, "new-k1"):
			return hold(ctx, newHeld)
		}
		return nil
	})
	h = start(t, p, spool.Config{SendTimeout: 10 * time.Second}, first.path, time.Minute)
	h.mustSend(msg("new-k1", "k1"))
	return h, oldHeld, newHeld
}

// TestRecoveryEndsUnderSteadyLoad: after a restart with leftovers, routing
// returns to direct once the leftovers are forwarded, even if new events
// keep the spool from ever being empty.
func TestRecoveryEndsUnderSteadyLoad(t *testing.T) {
	t.Parallel()
	h, oldHeld, newHeld := restartWithLeftovers(t)
	if n := h.spooled("restart"); n != 1 {
		t.Fatalf("spooled{restart} = %v, want 1", n)
	}
	close(oldHeld)
	testwait.Until(t, 10*time.Second, "the leftovers were forwarded", func() bool { return h.p.has("old1") && h.p.has("old2") })
	testwait.Until(t, 10*time.Second, "recovery ended", func() bool { return !h.sp.State().Recovering })
	h.mustSend(msg("new-k5", "k5"))
	if !h.p.has("new-k5") || h.spooled("restart") != 1 {
		t.Errorf("a call with nothing in the spool was still spooled after recovery (restart=%v)", h.spooled("restart"))
	}
	if a, _ := h.counts(); a != 1 {
		t.Errorf("store holds %d, want new-k1 only", a)
	}
	close(newHeld)
	h.drained()
}

func TestDeadLetterMarkingSurvivesSpool(t *testing.T) {
	t.Parallel()
	p := &primary{}
	p.set(failAll)
	h := start(t, p, spool.Config{}, "", 0)
	m := msg("bad", "k")
	m.Properties = map[string]any{relay.PropType: "x"}
	m.DeadLetterReason, m.DeadLetterDescription = relay.ReasonMalformedEvent, "data is not an object"
	h.mustSend(m)
	if m.Properties[relay.PropType] != "x" || len(m.Properties) != 1 {
		t.Errorf("the caller's message was modified: %v", m.Properties)
	}
	p.set(nil)
	h.drained()
	p.mu.Lock()
	got := p.accepted[0]
	p.mu.Unlock()
	if got.DeadLetterReason != relay.ReasonMalformedEvent || got.DeadLetterDescription != "data is not an object" {
		t.Errorf("forwarded with reason %q, description %q", got.DeadLetterReason, got.DeadLetterDescription)
	}
	if len(got.Properties) != 1 || got.Properties[relay.PropType] != "x" {
		t.Errorf("forwarded properties %v", got.Properties)
	}
}

// TestTooLargeWhileForwarding: an event spooled while Service Bus was down
// turns out too large for it; it is set aside in the spool's dead-letter
// queue and the others are forwarded, once each: whether Service Bus
// refuses the batch whole, or (as relay/servicebus sends to it) takes the
// others and names the one too large.
func TestTooLargeWhileForwarding(t *testing.T) {
	t.Parallel()
	tooLarge := fmt.Errorf("%w: message big exceeds the queue's limit", relay.ErrMessageTooLarge)
	for _, named := range []bool{false, true} {
		t.Run(fmt.Sprintf("named=%v", named), func(t *testing.T) {
			t.Parallel()
			p := &primary{}
			p.set(failAll)
			h := start(t, p, spool.Config{}, "", 0)
			h.mustSend(msg("m1", "k1"), msg("big", "k2"), msg("m2", "k3"))
			p.set(func(ctx context.Context, msgs []relay.Message) error {
				switch {
				case !contains(msgs, "big"):
					return nil
				case !named:
					return tooLarge
				}
				var others []relay.Message
				for _, m := range msgs {
					if m.ID != "big" {
						others = append(others, m)
					}
				}
				p.accept(others)
				return &relay.NotSentError{IDs: []string{"big"}, Err: tooLarge}
			})
			h.drained()
			for _, id := range []string{"m1", "m2"} {
				if n := p.times(id); n != 1 {
					t.Errorf("%s reached Service Bus %d times, want once", id, n)
				}
			}
			if p.has("big") {
				t.Errorf("the event too large was accepted: %v", p.accepted)
			}
			if _, d := h.counts(); d != 1 {
				t.Errorf("the spool's dead-letter queue holds %d, want 1", d)
			}
			if n := metrictest.Value(t, h.reg, "hookbridge_spool_dead_lettered_total"); n != 1 {
				t.Errorf("dead_lettered_total = %v", n)
			}
			if !strings.Contains(h.logs.String(), spool.ReasonTooLarge) {
				t.Error("setting the event aside was not logged")
			}
		})
	}
}

// TestLocksHeldThroughLongOutage: the forwarder keeps renewing the locks of
// what it holds, so an outage longer than the store's lock duration does
// not make it send an event twice or count deliveries towards the store's
// dead-lettering.
func TestLocksHeldThroughLongOutage(t *testing.T) {
	t.Parallel()
	p := &primary{}
	p.set(failAll)
	h := start(t, p, spool.Config{}, "", 200*time.Millisecond)
	h.mustSend(msg("m", "k"))
	time.Sleep(time.Second)
	p.set(nil)
	h.drained()
	if n := h.p.times("m"); n != 1 {
		t.Errorf("m reached the primary %d times, want once", n)
	}
	if _, d := h.counts(); d != 0 {
		t.Errorf("%d dead-lettered", d)
	}
}

// TestStopReleasesHeldMessages: a forwarder that stops mid-outage abandons
// what it holds, so the next run forwards it at once rather than after the
// lock expires.
func TestStopReleasesHeldMessages(t *testing.T) {
	t.Parallel()
	p := &primary{}
	p.set(failAll)
	first := start(t, p, spool.Config{}, "", time.Hour)
	first.mustSend(msg("m", "k"))
	testwait.Until(t, 10*time.Second, "the forwarder tried", func() bool {
		return metrictest.Value(t, first.reg, "hookbridge_spool_forward_failures_total") > 0
	})
	first.stop()
	p.set(nil)
	h := start(t, p, spool.Config{}, first.path, time.Hour)
	h.drained()
	if !h.p.has("m") {
		t.Error("m not forwarded")
	}
}

func TestRunAndReadiness(t *testing.T) {
	t.Parallel()
	store := openStore(t, filepath.Join(t.TempDir(), "s.db"), 0)
	defer store.Close()
	sp, err := spool.New(&primary{}, store, spool.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := sp.Ready(context.Background()); err == nil {
		t.Error("ready before Run")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := sp.SendBatch(ctx, []relay.Message{msg("m", "k")}); !errors.Is(err, relay.ErrUnavailable) {
		t.Errorf("SendBatch without Run: %v, want ErrUnavailable", err)
	}
	rctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sp.Run(rctx) }()
	testwait.Until(t, 10*time.Second, "ready", func() bool { return sp.Ready(context.Background()) == nil })
	if err := sp.Run(rctx); err == nil {
		t.Error("a second Run was accepted")
	}
	stop()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
	if err := sp.Ready(context.Background()); err == nil {
		t.Error("ready after Run returned")
	}
}

// brokenStore is a store whose commits fail while broken is set.
type brokenStore struct {
	*sqlite.Queue
	broken atomic.Bool
}

func (s *brokenStore) SendBatch(ctx context.Context, msgs []relay.Message) error {
	if s.broken.Load() {
		return fmt.Errorf("%w: sqlite commit: disk full; free space on the queue's volume", relay.ErrUnavailable)
	}
	return s.Queue.SendBatch(ctx, msgs)
}

// TestStoreFailure: with Service Bus down and the spool unable to commit,
// the request gets a retryable error naming both, readiness fails for a
// while, then comes back so that the next request tries again.
func TestStoreFailure(t *testing.T) {
	t.Parallel()
	store := &brokenStore{Queue: openStore(t, filepath.Join(t.TempDir(), "s.db"), 0)}
	defer store.Close()
	p := &primary{}
	p.set(failAll)
	sp, err := spool.New(p, store, fast(spool.Config{Cooldown: 300 * time.Millisecond}))
	if err != nil {
		t.Fatal(err)
	}
	stop := testrun.Start(t, sp.Run)
	defer stop()
	testwait.Until(t, 10*time.Second, "ready", func() bool { return sp.Ready(context.Background()) == nil })
	store.broken.Store(true)
	err = sp.SendBatch(context.Background(), []relay.Message{msg("m", "k")})
	if !errors.Is(err, relay.ErrUnavailable) || !strings.Contains(err.Error(), "connection refused") || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("err = %v, want ErrUnavailable naming both failures", err)
	}
	if err := sp.Ready(context.Background()); err == nil {
		t.Error("ready right after the spool failed to commit while Service Bus is down")
	}
	testwait.Until(t, 10*time.Second, "ready again after the cooldown", func() bool { return sp.Ready(context.Background()) == nil })
	store.broken.Store(false)
	if err := sp.SendBatch(context.Background(), []relay.Message{msg("m2", "k")}); err != nil {
		t.Fatalf("after the store recovered: %v", err)
	}
	p.set(nil)
	testwait.Until(t, 10*time.Second, "drained", func() bool { return sp.State().Mode == spool.ModeDirect })
	if got := p.order("k"); !slices.Equal(got, []string{"m2"}) {
		t.Errorf("forwarded %v", got)
	}
}

// After a restart with leftovers of a call, a new event of that call is
// spooled behind them. Forwarding the leftovers ends the recovery, but the
// new event is still in the spool, so the call's next event must follow it
// there rather than overtake it on the primary.
func TestRecoveryKeepsNewEventsOfLeftoverCalls(t *testing.T) {
	t.Parallel()
	h, oldHeld, newHeld := restartWithLeftovers(t)
	close(oldHeld)
	testwait.Until(t, 10*time.Second, "recovery ended", func() bool { return !h.sp.State().Recovering })
	h.mustSend(msg("new-k1b", "k1"))
	if h.p.attempted("new-k1b") {
		t.Errorf("new-k1b went to the primary while new-k1 was still in the spool; state %+v", h.sp.State())
	}
	close(newHeld)
	h.drained()
	if got := h.p.order("k1"); !slices.Equal(got, []string{"old1", "new-k1", "new-k1b"}) {
		t.Errorf("k1 delivered as %v, want [old1 new-k1 new-k1b]", got)
	}
}

// readyStore is a store whose readiness the test sets.
type readyStore struct {
	*sqlite.Queue
	mu  sync.Mutex
	err error
}

func (r *readyStore) Ready(context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

func (r *readyStore) set(err error) {
	r.mu.Lock()
	r.err = err
	r.mu.Unlock()
}

// A spool that could not commit shows while Service Bus is healthy, before
// an outage needs it: in State, in a gauge and in one log line, each way.
// Readiness holds: the ingress sends straight to Service Bus meanwhile.
func TestBrokenStoreShowsBeforeAnOutage(t *testing.T) {
	t.Parallel()
	store := &readyStore{Queue: openStore(t, filepath.Join(t.TempDir(), "spool.db"), time.Minute)}
	t.Cleanup(func() { store.Close() })
	reg, logs := prometheus.NewRegistry(), &testlog.Buffer{}
	cfg := fast(spool.Config{Poll: 5 * time.Millisecond})
	cfg.Registerer = reg
	cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	sp, err := spool.New(&primary{}, store, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sp.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	store.set(errors.New("sqlite commit: disk full"))
	testwait.Until(t, 10*time.Second, "the store's failure in State", func() bool { return strings.Contains(sp.State().StoreError, "disk full") })
	if got := metrictest.Value(t, reg, "hookbridge_spool_store_ready"); got != 0 {
		t.Errorf("hookbridge_spool_store_ready = %v with a failing store, want 0", got)
	}
	if err := sp.Ready(context.Background()); err != nil {
		t.Errorf("Ready with Service Bus healthy and the store failing: %v, want nil", err)
	}
	store.set(nil)
	testwait.Until(t, 10*time.Second, "the store's recovery in State", func() bool { return sp.State().StoreError == "" })
	if got := metrictest.Value(t, reg, "hookbridge_spool_store_ready"); got != 1 {
		t.Errorf("hookbridge_spool_store_ready = %v, want 1", got)
	}
	out := logs.String()
	if strings.Count(out, "spool cannot commit") != 1 || strings.Count(out, "can commit again") != 1 {
		t.Errorf("want one log line each for the failure and the recovery:\n%s", out)
	}
}
