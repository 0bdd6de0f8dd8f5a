package ingress_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hookbridge/hookbridge/ingress"
	"github.com/hookbridge/hookbridge/internal/metrictest"
	"github.com/hookbridge/hookbridge/relay"
	"github.com/hookbridge/hookbridge/schemas"
)

// staticVerifier accepts requests carrying its token in X-Test-Token.
type staticVerifier struct{ ready bool }

func (staticVerifier) Name() string  { return "test" }
func (v staticVerifier) Ready() bool { return v.ready }
func (staticVerifier) Verify(r *http.Request) (ingress.Credential, error) {
	if r.Header.Get("X-Test-Token") != "ok" {
		return ingress.Credential{}, &ingress.Error{Status: 401, Cause: ingress.CauseMissingCredentials, Message: "no test token"}
	}
	return ingress.Credential{}, nil
}

func testRequest(method, path, contentType, body string) *http.Request {
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	req.Header.Set("X-Test-Token", "ok")
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	return req
}

func TestStatusCodes(t *testing.T) {
	t.Parallel()
	pub := &fakePublisher{}
	reg := prometheus.NewRegistry()
	h, _ := newServer(t, ingress.Config{Publisher: pub, ACSVerifiers: []ingress.Verifier{staticVerifier{true}}, MaxBodyBytes: 4096, Registerer: reg})

	big := `[` + strings.Repeat(`{"specversion":"1.0","id":"x","source":"s","type":"t"},`, 100) + `{"specversion":"1.0","id":"x","source":"s","type":"t"}]`
	chunked := testRequest(http.MethodPost, "/acs/callbacks", "application/json", big)
	chunked.ContentLength = -1 // no Content-Length: the limit applies while reading
	noAuth := testRequest(http.MethodPost, "/acs/callbacks", "application/json", callConnected)
	noAuth.Header.Del("X-Test-Token")

	tests := []struct {
		name   string
		req    *http.Request
		status int
		cause  string
	}{
		{"accepted", testRequest(http.MethodPost, "/acs/callbacks", "application/json", callConnected), 200, ""},
		{"accepted with charset", testRequest(http.MethodPost, "/acs/callbacks", "application/json; charset=utf-8", callConnected), 200, ""},
		{"charset spelt utf8", testRequest(http.MethodPost, "/acs/callbacks", "application/json; charset=UTF8", callConnected), 200, ""},
		{"accepted as cloudevents batch", testRequest(http.MethodPost, "/acs/callbacks", "application/cloudevents-batch+json", callConnected), 200, ""},
		{"accepted without content type", testRequest(http.MethodPost, "/acs/callbacks", "", callConnected), 200, ""},
		{"malformed JSON", testRequest(http.MethodPost, "/acs/callbacks", "application/json", `[{"id":`), 400, ingress.CauseMalformedBody},
		{"empty body", testRequest(http.MethodPost, "/acs/callbacks", "application/json", ``), 400, ingress.CauseMalformedBody},
		// A verified sender's JSON is never refused: what is not an event is
		// dead-lettered, an empty array accepted with nothing to queue.
		{"not an event", testRequest(http.MethodPost, "/acs/callbacks", "application/json", `[{"hello":"world"}]`), 200, ingress.CauseMalformedEvent},
		{"empty array", testRequest(http.MethodPost, "/acs/callbacks", "application/json", `[]`), 200, ""},
		{"missing credentials", noAuth, 401, ingress.CauseMissingCredentials},
		{"unknown route", testRequest(http.MethodPost, "/callbacks", "application/json", callConnected), 404, ingress.CauseNotFound},
		{"unconfigured route", testRequest(http.MethodPost, "/eventgrid", "application/json", callConnected), 404, ingress.CauseNotFound},
		{"wrong method", testRequest(http.MethodGet, "/acs/callbacks", "", ""), 405, ingress.CauseMethodNotAllowed},
		{"body over the limit", testRequest(http.MethodPost, "/acs/callbacks", "application/json", big), 413, ingress.CauseBodyTooLarge},
		{"chunked body over the limit", chunked, 413, ingress.CauseBodyTooLarge},
		{"text/plain", testRequest(http.MethodPost, "/acs/callbacks", "text/plain", callConnected), 415, ingress.CauseUnsupportedMedia},
		{"form", testRequest(http.MethodPost, "/acs/callbacks", "application/x-www-form-urlencoded", "a=b"), 415, ingress.CauseUnsupportedMedia},
		{"latin-1", testRequest(http.MethodPost, "/acs/callbacks", "application/json; charset=iso-8859-1", callConnected), 415, ingress.CauseUnsupportedMedia},
		{"garbled content type", testRequest(http.MethodPost, "/acs/callbacks", "application/json; ===", callConnected), 415, ingress.CauseUnsupportedMedia},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := do(t, h, tt.req)
			if r.status != tt.status {
				t.Fatalf("status %d, want %d: %s", r.status, tt.status, r.raw)
			}
			if tt.status == 200 {
				want := map[string]float64{"accepted": 1}
				switch tt.name {
				case "not an event":
					want = map[string]float64{"accepted": 0, "dead_lettered": 1}
				case "empty array":
					want = map[string]float64{"accepted": 0}
				}
				for k, v := range want {
					if r.body[k] != v {
						t.Errorf("body %s, want %s %v", r.raw, k, v)
					}
				}
				return
			}
			msg, _ := r.body["error"].(string)
			id, _ := r.body["id"].(string)
			if msg == "" || len(id) != 16 {
				t.Errorf("error body %s: want {error, id}", r.raw)
			}
			if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
				t.Errorf("error Content-Type %q", ct)
			}
			if metrictest.Value(t, reg, "hookbridge_ingress_requests_total", "cause", tt.cause) < 1 {
				t.Errorf("no request counted with cause %q", tt.cause)
			}
		})
	}
	if n := pub.count(); n != 5 {
		t.Errorf("%d events published, want 5", n)
	}
}

func TestQueueFailureIsNever200(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		err    error
		status int
	}{
		{"unavailable", fmt.Errorf("%w: disk full", relay.ErrUnavailable), 503},
		{"closed", relay.ErrClosed, 503},
		{"unexpected", errors.New("something odd"), 503},
		{"too large", fmt.Errorf("%w: 300 KB", relay.ErrMessageTooLarge), 413},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h, logs := newServer(t, ingress.Config{Publisher: &fakePublisher{err: tt.err}, ACSVerifiers: []ingress.Verifier{staticVerifier{true}}})
			r := do(t, h, testRequest(http.MethodPost, "/acs/callbacks", "application/json", callConnected))
			if r.status != tt.status {
				t.Fatalf("status %d, want %d", r.status, tt.status)
			}
			if tt.status == 503 && r.header.Get("Retry-After") == "" {
				t.Error("503 without Retry-After")
			}
			// The detail is in the log under the response's error ID, not
			// in the response.
			id, _ := r.body["id"].(string)
			if !strings.Contains(logs.String(), id) || strings.Contains(r.raw, tt.err.Error()) {
				t.Errorf("error %s: response %s, log %s", id, r.raw, logs.String())
			}
		})
	}
}

func TestEnqueueTimeoutIs503(t *testing.T) {
	t.Parallel()
	h, _ := newServer(t, ingress.Config{Publisher: &fakePublisher{delay: time.Second}, ACSVerifiers: []ingress.Verifier{staticVerifier{true}}, EnqueueTimeout: 50 * time.Millisecond})
	r := do(t, h, testRequest(http.MethodPost, "/acs/callbacks", "application/json", callConnected))
	if r.status != 503 {
		t.Fatalf("status %d, want 503", r.status)
	}
}

// failingSender fails every commit, as a full disk would.
type failingSender struct{}

func (failingSender) SendBatch(context.Context, []relay.Message) error {
	return fmt.Errorf("%w: sqlite commit: disk full", relay.ErrUnavailable)
}

// TestRealQueuePath runs requests through group commit into the SQLite
// queue, then through a failing backend.
func TestRealQueuePath(t *testing.T) {
	t.Parallel()
	q, b := newQueue(t)
	h, _ := newServer(t, ingress.Config{Publisher: b, ACSVerifiers: []ingress.Verifier{staticVerifier{true}}})
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body := strings.ReplaceAll(callConnected, "evt-1", fmt.Sprintf("evt-%d", i))
			if r := do(t, h, testRequest(http.MethodPost, "/acs/callbacks", "application/json", body)); r.status != 200 {
				t.Errorf("request %d: %d %s", i, r.status, r.raw)
			}
		}()
	}
	wg.Wait()
	active, _, err := q.Counts(context.Background())
	if err != nil || active != 20 {
		t.Fatalf("queue holds %d messages after 20 accepted requests (err %v)", active, err)
	}
	msgs, err := q.Receive(context.Background(), 1)
	if err != nil {
		t.Fatal(err)
	}
	e, err := msgs[0].Event()
	if err != nil {
		t.Fatal(err)
	}
	if e.PartitionKey != "corr-1" || msgs[0].SessionID != "corr-1" || e.Verifier != "test" || e.Route != schemas.RouteACSCallbacks {
		t.Errorf("queued event %+v (session %q)", e, msgs[0].SessionID)
	}

	fb, _ := relay.NewBatcher(failingSender{}, relay.BatchConfig{}, nil)
	go fb.Run(context.Background())
	defer fb.Close()
	fh, _ := newServer(t, ingress.Config{Publisher: fb, ACSVerifiers: []ingress.Verifier{staticVerifier{true}}})
	if r := do(t, fh, testRequest(http.MethodPost, "/acs/callbacks", "application/json", callConnected)); r.status != 503 {
		t.Fatalf("with every commit failing: %d, want 503", r.status)
	}
}

// TestConcurrencyCap: requests beyond the cap wait for a slot, up to the
// enqueue timeout; only those still waiting then get 503.
func TestConcurrencyCap(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		timeout time.Duration
		want200 int
	}{
		// Each request holds its slot 300ms: two wait 300ms for a slot,
		// within the 450ms allowed; the fifth would wait 600ms.
		{"the burst outlasts the wait", 450 * time.Millisecond, 4},
		{"slots free up within the wait", 5 * time.Second, 5},
	} {
		pub := &fakePublisher{delay: 300 * time.Millisecond}
		h, _ := newServer(t, ingress.Config{Publisher: pub, ACSVerifiers: []ingress.Verifier{staticVerifier{true}},
			MaxConcurrentRequests: 2, EnqueueTimeout: tc.timeout})
		var wg sync.WaitGroup
		statuses := make(chan int, 5)
		for range 5 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				statuses <- do(t, h, testRequest(http.MethodPost, "/acs/callbacks", "application/json", callConnected)).status
			}()
		}
		wg.Wait()
		close(statuses)
		count := map[int]int{}
		for s := range statuses {
			count[s]++
		}
		if count[200] != tc.want200 || count[503] != 5-tc.want200 {
			t.Errorf("%s: statuses %v, want %d×200 and the rest 503", tc.name, count, tc.want200)
		}
	}
}

func TestNoVerifierRefusesToStart(t *testing.T) {
	t.Parallel()
	_, err := ingress.New(ingress.Config{Publisher: &fakePublisher{}})
	if err == nil || !strings.Contains(err.Error(), "--insecure-allow-unauthenticated") {
		t.Fatalf("New without verifiers: %v", err)
	}
	h, logs := newServer(t, ingress.Config{Publisher: &fakePublisher{}, InsecureAllowUnauthenticated: true})
	req := httptest.NewRequest(http.MethodPost, "/acs/callbacks", strings.NewReader(callConnected))
	if r := do(t, h, req); r.status != 200 {
		t.Fatalf("insecure mode: %d", r.status)
	}
	if n := strings.Count(logs.String(), "INSECURE"); n < 2 {
		t.Errorf("insecure mode logged %d warnings, want one at start and one per request", n)
	}
}

func TestHealthzAndAdmin(t *testing.T) {
	t.Parallel()
	h, _ := newServer(t, ingress.Config{Publisher: &fakePublisher{}, ACSVerifiers: []ingress.Verifier{staticVerifier{true}}})
	if r := do(t, h, httptest.NewRequest(http.MethodGet, "/healthz", nil)); r.status != 200 {
		t.Errorf("public /healthz: %d", r.status)
	}
	reg := prometheus.NewRegistry()
	queueErr := errors.New("database is locked")
	var failQueue bool
	var mu sync.Mutex
	admin := ingress.AdminHandler(reg,
		ingress.Check{Name: "keys", Check: func(context.Context) error { return nil }},
		ingress.Check{Name: "queue", Check: func(context.Context) error {
			mu.Lock()
			defer mu.Unlock()
			if failQueue {
				return queueErr
			}
			return nil
		}})
	for _, p := range []string{"/healthz", "/readyz", "/metrics"} {
		if r := do(t, admin, httptest.NewRequest(http.MethodGet, p, nil)); r.status != 200 {
			t.Errorf("admin %s: %d", p, r.status)
		}
	}
	mu.Lock()
	failQueue = true
	mu.Unlock()
	r := do(t, admin, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	if r.status != 503 || !strings.Contains(r.raw, "database is locked") {
		t.Errorf("/readyz with the queue down: %d %s", r.status, r.raw)
	}
}

func TestServeDrainsInFlightRequests(t *testing.T) {
	t.Parallel()
	pub := &fakePublisher{delay: 300 * time.Millisecond}
	s, err := ingress.New(ingress.Config{Publisher: pub, ACSVerifiers: []ingress.Verifier{staticVerifier{true}}})
	if err != nil {
		t.Fatal(err)
	}
	addr, stop := serve(t, s)
	got := make(chan int, 1)
	go func() {
		status, err := postCallConnected(addr)
		if err != nil {
			status = -1
		}
		got <- status
	}()
	time.Sleep(100 * time.Millisecond) // the request is waiting for its commit
	stop(nil)
	if status := <-got; status != 200 {
		t.Errorf("request in flight during shutdown: %d, want 200", status)
	}
	if err := stop(nil); err != nil {
		t.Errorf("Serve: %v", err)
	}
	if s.Ready() == nil {
		t.Error("still ready after shutdown")
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	valid := ingress.Config{Publisher: &fakePublisher{}, ACSVerifiers: []ingress.Verifier{staticVerifier{}}}
	if err := valid.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, change := range map[string]func(*ingress.Config){
		"no publisher":     func(c *ingress.Config) { c.Publisher = nil },
		"no verifier":      func(c *ingress.Config) { c.ACSVerifiers = nil },
		"huge body":        func(c *ingress.Config) { c.MaxBodyBytes = 1 << 30 },
		"negative body":    func(c *ingress.Config) { c.MaxBodyBytes = -1 },
		"negative timeout": func(c *ingress.Config) { c.ReadTimeout = -1 },
		"negative cap":     func(c *ingress.Config) { c.MaxConcurrentRequests = -1 },
		"negative enqueue": func(c *ingress.Config) { c.EnqueueTimeout = -1 },
		"negative message": func(c *ingress.Config) { c.MaxMessageBytes = -1 },
		// A body the queue could not keep even as received.
		"body over the queue's message": func(c *ingress.Config) { c.MaxBodyBytes, c.MaxMessageBytes = 2<<20, 1<<20 },
		"default body over it":          func(c *ingress.Config) { c.MaxMessageBytes = 256 << 10 },
	} {
		c := valid
		change(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
