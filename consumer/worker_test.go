package consumer_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hookbridge/hookbridge/consumer"
	"github.com/hookbridge/hookbridge/internal/freeport"
	"github.com/hookbridge/hookbridge/internal/sqlitetest"
	"github.com/hookbridge/hookbridge/internal/testlog"
	"github.com/hookbridge/hookbridge/internal/testrun"
	"github.com/hookbridge/hookbridge/relay"
	"github.com/hookbridge/hookbridge/relay/relaytest"
	"github.com/hookbridge/hookbridge/relay/sqlite"
	"github.com/hookbridge/hookbridge/schemas"
)

// event builds a normalized event and its message.
func event(t testing.TB, id, key string) relay.Message {
	t.Helper()
	data := "{}"
	if key != "" {
		data = fmt.Sprintf(`{"correlationId":%q}`, key)
	}
	return relaytest.EventMessage(t, schemas.Event{ID: id, Source: "test", Type: "Microsoft.Communication.CallConnected",
		Data: json.RawMessage(data), PartitionKey: key, Received: time.Now(), Route: schemas.RouteACSCallbacks, Verifier: "test"})
}

// settlement is what a fakeSource recorded for one message.
type settlement struct {
	kind        string // complete, abandon, deadletter
	delay       time.Duration
	reason      string
	description string
}

// fakeSource hands out a fixed list of messages once, then blocks; it
// records settlements.
type fakeSource struct {
	mu       sync.Mutex
	pending  []*relay.Received
	settled  map[string]settlement
	done     chan string // message IDs as they are settled
	renewErr error
	renewals atomic.Int32
}

func newFakeSource(msgs ...relay.Message) *fakeSource {
	f := &fakeSource{settled: map[string]settlement{}, done: make(chan string, len(msgs)+1)}
	for i, m := range msgs {
		f.pending = append(f.pending, &relay.Received{Message: m, SequenceNumber: int64(i + 1), DeliveryCount: 1,
			LockedUntil: time.Now().Add(time.Hour), LockToken: fmt.Sprint(i)})
	}
	return f
}

func (f *fakeSource) Receive(ctx context.Context, n int) ([]*relay.Received, error) {
	f.mu.Lock()
	if len(f.pending) > 0 {
		n = min(n, len(f.pending))
		out := f.pending[:n]
		f.pending = f.pending[n:]
		f.mu.Unlock()
		return out, nil
	}
	f.mu.Unlock()
	<-ctx.Done()
	return nil, ctx.Err()
}

func (f *fakeSource) record(m *relay.Received, s settlement) error {
	f.mu.Lock()
	f.settled[m.ID] = s
	f.mu.Unlock()
	f.done <- m.ID
	return nil
}

func (f *fakeSource) Complete(_ context.Context, m *relay.Received) error {
	return f.record(m, settlement{kind: "complete"})
}
func (f *fakeSource) Abandon(_ context.Context, m *relay.Received, d time.Duration) error {
	return f.record(m, settlement{kind: "abandon", delay: d})
}
func (f *fakeSource) DeadLetter(_ context.Context, m *relay.Received, reason, desc string) error {
	return f.record(m, settlement{kind: "deadletter", reason: reason, description: desc})
}
func (f *fakeSource) RenewLock(_ context.Context, m *relay.Received) error {
	f.renewals.Add(1)
	if f.renewErr != nil {
		return f.renewErr
	}
	m.LockedUntil = time.Now().Add(200 * time.Millisecond)
	return nil
}

func waitSettled(t *testing.T, f *fakeSource, n int) {
	t.Helper()
	for i := range n {
		select {
		case <-f.done:
		case <-time.After(20 * time.Second):
			t.Fatalf("only %d of %d messages settled", i, n)
		}
	}
}

func TestSettlementMatrix(t *testing.T) {
	t.Parallel()
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/200", "/204":
			if r.Header.Get("Content-Type") != schemas.ContentType {
				w.WriteHeader(http.StatusUnsupportedMediaType)
				return
			}
			var e map[string]any
			if err := json.NewDecoder(r.Body).Decode(&e); err != nil || e["specversion"] != "1.0" {
				w.WriteHeader(http.StatusBadRequest)
				return
			}
			if r.URL.Path == "/204" {
				w.WriteHeader(http.StatusNoContent)
			}
		case "/400":
			http.Error(w, "missing field callConnectionId", http.StatusBadRequest)
		case "/404":
			http.NotFound(w, r)
		case "/408":
			w.WriteHeader(http.StatusRequestTimeout)
		case "/429":
			w.Header().Set("Retry-After", "7")
			w.WriteHeader(http.StatusTooManyRequests)
		case "/500":
			http.Error(w, "boom", http.StatusInternalServerError)
		case "/503":
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusServiceUnavailable)
		case "/slow":
			io.Copy(io.Discard, r.Body) // lets the server notice the client giving up
			select {
			case <-r.Context().Done():
			case <-time.After(10 * time.Second):
			}
		}
	}))
	t.Cleanup(backend.Close)
	refused := "http://" + freeport.Addr(t) + "/x" // a port nobody listens on

	tests := []struct {
		url       string
		kind      string
		reason    string
		minDelay  time.Duration
		inDetails string
	}{
		{backend.URL + "/200", "complete", "", 0, ""},
		{backend.URL + "/204", "complete", "", 0, ""},
		{backend.URL + "/400", "deadletter", consumer.ReasonBackendRejected, 0, "400 Bad Request: missing field callConnectionId"},
		{backend.URL + "/404", "deadletter", consumer.ReasonBackendRejected, 0, "404 Not Found"},
		{backend.URL + "/408", "abandon", "", 50 * time.Millisecond, ""},
		{backend.URL + "/429", "abandon", "", 7 * time.Second, ""},
		{backend.URL + "/500", "abandon", "", 50 * time.Millisecond, ""},
		{backend.URL + "/503", "abandon", "", time.Second, ""},
		{backend.URL + "/slow", "abandon", "", 50 * time.Millisecond, ""},
		{refused, "abandon", "", 50 * time.Millisecond, ""},
	}
	for _, tt := range tests {
		name := tt.url[strings.LastIndex(tt.url, "/")+1:]
		if tt.url == refused {
			name = "connection-refused"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			target, err := consumer.NewHTTP(consumer.HTTPConfig{URL: tt.url + "?token=s3cret"})
			if err != nil {
				t.Fatal(err)
			}
			src := newFakeSource(event(t, "e-"+name, "k"))
			w, err := consumer.New(src, target, consumer.Config{
				DeliveryTimeout: 300 * time.Millisecond,
				MinBackoff:      100 * time.Millisecond,
				MaxBackoff:      30 * time.Second,
			})
			if err != nil {
				t.Fatal(err)
			}
			testrun.Start(t, w.Run)
			waitSettled(t, src, 1)
			got := src.settled["e-"+name]
			if got.kind != tt.kind || got.reason != tt.reason {
				t.Fatalf("settled %+v, want %s %s", got, tt.kind, tt.reason)
			}
			if got.delay < tt.minDelay {
				t.Errorf("retry delay %v, want at least %v", got.delay, tt.minDelay)
			}
			if !strings.Contains(got.description, tt.inDetails) {
				t.Errorf("description %q does not contain %q", got.description, tt.inDetails)
			}
			if strings.Contains(got.description, "s3cret") {
				t.Errorf("description leaks the URL's query: %q", got.description)
			}
		})
	}
}

func TestInvalidMessageIsDeadLettered(t *testing.T) {
	t.Parallel()
	m := event(t, "bad", "")
	m.Body = []byte(`{"not":"an event"}`)
	src := newFakeSource(m)
	w, _ := consumer.New(src, consumer.HandlerFunc(func(context.Context, *schemas.Event) error {
		t.Error("handler called for an invalid message")
		return nil
	}), consumer.Config{})
	testrun.Start(t, w.Run)
	waitSettled(t, src, 1)
	if got := src.settled["bad"]; got.kind != "deadletter" || got.reason != consumer.ReasonInvalidMessage {
		t.Errorf("settled %+v", got)
	}
}

func TestPermanentHandlerError(t *testing.T) {
	t.Parallel()
	src := newFakeSource(event(t, "p1", ""), event(t, "p2", ""))
	w, _ := consumer.New(src, consumer.HandlerFunc(func(_ context.Context, e *schemas.Event) error {
		if e.ID == "p1" {
			return consumer.Permanent("UnknownCustomer", errors.New("no customer for this number"))
		}
		return consumer.Permanent("", errors.New("nope"))
	}), consumer.Config{})
	testrun.Start(t, w.Run)
	waitSettled(t, src, 2)
	if got := src.settled["p1"]; got.reason != "UnknownCustomer" || got.description != "no customer for this number" {
		t.Errorf("p1 settled %+v", got)
	}
	if got := src.settled["p2"]; got.reason != consumer.ReasonHandlerRejected {
		t.Errorf("p2 settled %+v", got)
	}
}

func TestLockRenewedDuringLongDelivery(t *testing.T) {
	t.Parallel()
	src := newFakeSource(event(t, "long", ""))
	src.pending[0].LockedUntil = time.Now().Add(200 * time.Millisecond)
	w, _ := consumer.New(src, consumer.HandlerFunc(func(ctx context.Context, _ *schemas.Event) error {
		select {
		case <-time.After(time.Second):
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}), consumer.Config{})
	testrun.Start(t, w.Run)
	waitSettled(t, src, 1)
	if got := src.settled["long"]; got.kind != "complete" {
		t.Errorf("settled %+v", got)
	}
	if n := src.renewals.Load(); n < 4 {
		t.Errorf("%d renewals in 1s with a 200ms lock, want at least 4", n)
	}
}

func TestLockLostCancelsDeliveryWithoutSettling(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name        string
		count, max  int
		wantLogPart string
	}{
		{"an early delivery", 1, 10, "the queue will deliver the event again"},
		{"the last delivery", 10, 10, "the queue dead-letters the event (MaxDeliveryCountExceeded)"},
	} {
		src := newFakeSource(event(t, "lost", ""))
		src.pending[0].LockedUntil = time.Now().Add(100 * time.Millisecond)
		src.pending[0].DeliveryCount, src.pending[0].MaxDeliveryCount = tc.count, tc.max
		src.renewErr = fmt.Errorf("renew: %w", relay.ErrLockLost)
		cancelled := make(chan struct{})
		var logs testlog.Buffer
		w, _ := consumer.New(src, consumer.HandlerFunc(func(ctx context.Context, _ *schemas.Event) error {
			<-ctx.Done()
			close(cancelled)
			return ctx.Err()
		}), consumer.Config{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
		stop := testrun.Start(t, w.Run)
		select {
		case <-cancelled:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: delivery not cancelled after the lock was lost", tc.name)
		}
		stop()
		if len(src.settled) != 0 {
			t.Errorf("%s: settled after losing the lock: %v", tc.name, src.settled)
		}
		if !strings.Contains(logs.String(), tc.wantLogPart) {
			t.Errorf("%s: the lock-lost log does not say %q:\n%s", tc.name, tc.wantLogPart, logs.String())
		}
	}
}

func sendAll(t *testing.T, q *sqlite.Queue, msgs ...relay.Message) {
	t.Helper()
	if err := q.SendBatch(context.Background(), msgs); err != nil {
		t.Fatal(err)
	}
}

func TestOrderPerKeyWithConcurrency(t *testing.T) {
	t.Parallel()
	q := sqlitetest.Open(t, sqlite.Config{})
	const keys, perKey = 6, 20
	var msgs []relay.Message
	for i := range perKey {
		for k := range keys {
			msgs = append(msgs, event(t, fmt.Sprintf("k%d-%03d", k, i), fmt.Sprintf("call-%d", k)))
		}
	}
	sendAll(t, q, msgs...)
	var (
		mu       sync.Mutex
		order    = map[string][]string{}
		active   = map[string]bool{}
		running  int
		peak     int
		overlaps []string
	)
	all := make(chan struct{})
	w, _ := consumer.New(q, consumer.HandlerFunc(func(_ context.Context, e *schemas.Event) error {
		mu.Lock()
		if active[e.PartitionKey] {
			overlaps = append(overlaps, e.ID)
		}
		active[e.PartitionKey] = true
		running++
		peak = max(peak, running)
		mu.Unlock()
		time.Sleep(2 * time.Millisecond)
		mu.Lock()
		defer mu.Unlock()
		active[e.PartitionKey] = false
		running--
		order[e.PartitionKey] = append(order[e.PartitionKey], e.ID)
		total := 0
		for _, o := range order {
			total += len(o)
		}
		if total == keys*perKey {
			close(all)
		}
		return nil
	}), consumer.Config{Concurrency: 4})
	testrun.Start(t, w.Run)
	select {
	case <-all:
	case <-time.After(60 * time.Second):
		t.Fatal("not all events delivered")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(overlaps) > 0 {
		t.Errorf("events delivered while another of the same key was in flight: %v", overlaps)
	}
	for k, o := range order {
		if !slices.IsSorted(o) {
			t.Errorf("%s out of order: %v", k, o)
		}
	}
	if peak < 2 {
		t.Errorf("peak concurrency %d: keys were not delivered in parallel", peak)
	}
}

func TestRetryThenDeliver(t *testing.T) {
	t.Parallel()
	q := sqlitetest.Open(t, sqlite.Config{})
	sendAll(t, q, event(t, "flaky", "k"), event(t, "next", "k"))
	var calls []string
	var mu sync.Mutex
	done := make(chan struct{})
	w, _ := consumer.New(q, consumer.HandlerFunc(func(_ context.Context, e *schemas.Event) error {
		mu.Lock()
		defer mu.Unlock()
		calls = append(calls, e.ID)
		if e.ID == "flaky" && len(calls) < 3 {
			return errors.New("backend down")
		}
		if e.ID == "next" {
			close(done)
		}
		return nil
	}), consumer.Config{MinBackoff: 20 * time.Millisecond, MaxBackoff: 50 * time.Millisecond})
	testrun.Start(t, w.Run)
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("not delivered")
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(calls, []string{"flaky", "flaky", "flaky", "next"}) {
		t.Errorf("calls %v: a retried event must be delivered before the next of its key", calls)
	}
}

func TestMaxDeliveryDeadLetters(t *testing.T) {
	t.Parallel()
	q := sqlitetest.Open(t, sqlite.Config{MaxDeliveryCount: 3})
	sendAll(t, q, event(t, "poison", "k"), event(t, "after", "k"))
	delivered := make(chan string, 10)
	w, _ := consumer.New(q, consumer.HandlerFunc(func(_ context.Context, e *schemas.Event) error {
		if e.ID == "poison" {
			return errors.New("always fails")
		}
		delivered <- e.ID
		return nil
	}), consumer.Config{MinBackoff: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond})
	testrun.Start(t, w.Run)
	select {
	case id := <-delivered:
		if id != "after" {
			t.Fatalf("delivered %s", id)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the key stayed blocked behind its poison event")
	}
	dls, err := q.ListDeadLetters(context.Background(), 0, 10)
	if err != nil || len(dls) != 1 {
		t.Fatalf("dead letters %v, %v", dls, err)
	}
	if dls[0].ID != "poison" || dls[0].Reason != relay.ReasonMaxDelivery || dls[0].DeliveryCount != 3 {
		t.Errorf("dead letter %+v", dls[0])
	}
}

func TestShutdownFinishesInFlightDeliveries(t *testing.T) {
	t.Parallel()
	q := sqlitetest.Open(t, sqlite.Config{})
	sendAll(t, q, event(t, "a", "ka"), event(t, "b", "kb"))
	started := make(chan struct{}, 2)
	release := make(chan struct{})
	w, _ := consumer.New(q, consumer.HandlerFunc(func(context.Context, *schemas.Event) error {
		started <- struct{}{}
		<-release
		return nil
	}), consumer.Config{ShutdownTimeout: 10 * time.Second})
	stop := testrun.Start(t, w.Run)
	<-started
	<-started
	stopped := make(chan error)
	go func() { stopped <- stop() }()
	select {
	case <-stopped:
		t.Fatal("Run returned with deliveries in flight")
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	if err := <-stopped; err != nil {
		t.Fatalf("Run: %v", err)
	}
	active, _, err := q.Counts(context.Background())
	if err != nil || active != 0 {
		t.Errorf("%d messages left after a graceful shutdown (err %v), want 0", active, err)
	}
}

// TestHandlerGoexitFreesItsSlot: a handler that ends its goroutine
// (runtime.Goexit, as t.FailNow does) still gives its delivery slot back,
// so the worker goes on delivering with a concurrency of 1 and its Run
// returns on shutdown.
func TestHandlerGoexitFreesItsSlot(t *testing.T) {
	t.Parallel()
	q := sqlitetest.Open(t, sqlite.Config{})
	sendAll(t, q, event(t, "exits", "ka"), event(t, "next", "kb"))
	delivered := make(chan string, 2)
	w, _ := consumer.New(q, consumer.HandlerFunc(func(_ context.Context, e *schemas.Event) error {
		if e.ID == "exits" {
			runtime.Goexit()
		}
		delivered <- e.ID
		return nil
	}), consumer.Config{Concurrency: 1, ShutdownTimeout: 5 * time.Second})
	stop := testrun.Start(t, w.Run)
	select {
	case id := <-delivered:
		if id != "next" {
			t.Errorf("delivered %q, want next", id)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("nothing delivered after a handler ended its goroutine: its slot was never given back")
	}
	stopped := make(chan error, 1)
	go func() { stopped <- stop() }()
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return: a delivery was never counted as done")
	}
}

func TestShutdownTimeoutAbandonsStuckDeliveries(t *testing.T) {
	t.Parallel()
	q := sqlitetest.Open(t, sqlite.Config{})
	sendAll(t, q, event(t, "stuck", "k"))
	started := make(chan struct{})
	w, _ := consumer.New(q, consumer.HandlerFunc(func(ctx context.Context, _ *schemas.Event) error {
		close(started)
		<-ctx.Done()
		return ctx.Err()
	}), consumer.Config{ShutdownTimeout: 200 * time.Millisecond, MinBackoff: time.Millisecond, MaxBackoff: time.Millisecond})
	stop := testrun.Start(t, w.Run)
	<-started
	begin := time.Now()
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(begin); d > 5*time.Second {
		t.Errorf("shutdown took %v with a 200ms timeout", d)
	}
	// The message was abandoned, not left locked: a new receiver gets it now.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	msgs, err := q.Receive(ctx, 1)
	if err != nil || len(msgs) != 1 || msgs[0].ID != "stuck" || msgs[0].DeliveryCount != 2 {
		t.Fatalf("after shutdown: %v %v", msgs, err)
	}
}

func TestRunReturnsWhenSourceCloses(t *testing.T) {
	t.Parallel()
	q := sqlitetest.Open(t, sqlite.Config{})
	w, _ := consumer.New(q, consumer.NewStdout(&strings.Builder{}), consumer.Config{})
	errc := make(chan error, 1)
	go func() { errc <- w.Run(context.Background()) }()
	time.Sleep(100 * time.Millisecond)
	q.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, relay.ErrClosed) {
			t.Errorf("Run = %v, want ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after the source closed")
	}
}

func TestStdoutWritesOneLinePerEvent(t *testing.T) {
	t.Parallel()
	var out strings.Builder
	s := consumer.NewStdout(&out)
	e := &schemas.Event{ID: "1", Source: "s", Type: "t", Data: json.RawMessage("{\n \"a\": 1\n}")}
	if err := s.Handle(context.Background(), e); err != nil {
		t.Fatal(err)
	}
	if err := s.Handle(context.Background(), e); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d lines: %q", len(lines), out.String())
	}
	for _, l := range lines {
		if !json.Valid([]byte(l)) {
			t.Errorf("not a JSON line: %q", l)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	valid := consumer.Config{Concurrency: 4, DeliveryTimeout: time.Second, MinBackoff: time.Second, MaxBackoff: time.Minute, ShutdownTimeout: time.Second}
	if err := valid.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, change := range map[string]func(*consumer.Config){
		"negative concurrency": func(c *consumer.Config) { c.Concurrency = -1 },
		"huge concurrency":     func(c *consumer.Config) { c.Concurrency = 100000 },
		"negative timeout":     func(c *consumer.Config) { c.DeliveryTimeout = -1 },
		"negative backoff":     func(c *consumer.Config) { c.MinBackoff = -1 },
		"min above max":        func(c *consumer.Config) { c.MinBackoff = time.Hour },
		"negative shutdown":    func(c *consumer.Config) { c.ShutdownTimeout = -1 },
	} {
		c := valid
		change(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestNewHTTPRejectsBadURLs(t *testing.T) {
	t.Parallel()
	for _, u := range []string{"", "backend:8080", "ftp://x/y", "http://", "://x"} {
		if _, err := consumer.NewHTTP(consumer.HTTPConfig{URL: u}); err == nil {
			t.Errorf("NewHTTP(%q) accepted", u)
		}
	}
	if got := consumer.Redact("https://user:pw@backend/x?key=secret#f"); strings.Contains(got, "pw") || strings.Contains(got, "secret") {
		t.Errorf("Redact kept a secret: %s", got)
	}
}

// TestStoppingWorkerKeepsBackoff: a delivery that fails while the worker is
// stopping is abandoned with its backoff on a queue that delays natively
// (SQLite): the shutdown must not turn it into an immediate retry.
func TestStoppingWorkerKeepsBackoff(t *testing.T) {
	t.Parallel()
	for round := range 30 {
		q := sqlitetest.Open(t, sqlite.Config{})
		sendAll(t, q, event(t, "failing", "k"))
		started, fail := make(chan struct{}), make(chan struct{})
		w, _ := consumer.New(q, consumer.HandlerFunc(func(context.Context, *schemas.Event) error {
			close(started)
			<-fail
			return errors.New("backend down")
		}), consumer.Config{MinBackoff: time.Hour, MaxBackoff: time.Hour, ShutdownTimeout: 10 * time.Second})
		stop := testrun.Start(t, w.Run)
		<-started
		stopped := make(chan error, 1)
		go func() { stopped <- stop() }()
		time.Sleep(time.Duration(round%4) * 5 * time.Millisecond) // Run's context has ended, or is ending
		close(fail)
		if err := <-stopped; err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		got, err := q.Receive(ctx, 1)
		cancel()
		if err == nil {
			t.Fatalf("round %d: %s was available again at once, delivery %d: the shutdown dropped its one-hour backoff", round, got[0].ID, got[0].DeliveryCount)
		}
	}
}
