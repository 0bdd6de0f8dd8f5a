package ingress_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hookbridge/hookbridge/ingress"
	"github.com/hookbridge/hookbridge/internal/devissuer"
	"github.com/hookbridge/hookbridge/internal/devissuer/devissuertest"
	"github.com/hookbridge/hookbridge/internal/sqlitetest"
	"github.com/hookbridge/hookbridge/internal/testlog"
	"github.com/hookbridge/hookbridge/internal/testrun"
	"github.com/hookbridge/hookbridge/internal/testwait"
	"github.com/hookbridge/hookbridge/relay"
	"github.com/hookbridge/hookbridge/relay/sqlite"
	"github.com/hookbridge/hookbridge/schemas"
)

const testAudience = "1b2c3d4e-0000-4000-8000-00000000acs1"

// newIssuer serves a development issuer on loopback.
func newIssuer(t testing.TB) *devissuer.Issuer {
	t.Helper()
	return devissuertest.NewServer(t, testAudience)
}

// runVerifier runs a verifier's key refresh until the test ends and, if
// wait, waits until it has keys.
func runVerifier(t testing.TB, run func(context.Context) error, ready func() bool, wait bool) {
	t.Helper()
	testrun.Start(t, run)
	if wait {
		testwait.Until(t, 10*time.Second, "the verifier's signing keys loaded", ready)
	}
}

// newACS returns a running ACS verifier trusting iss. With wait set it
// returns once the keys are loaded.
func newACS(t testing.TB, iss *devissuer.Issuer, cfg ingress.ACSConfig, wait bool) *ingress.ACSVerifier {
	t.Helper()
	if cfg.Audiences == nil {
		cfg.Audiences = []string{testAudience}
	}
	cfg.OIDCURL = iss.DiscoveryURL()
	v, err := ingress.NewACSVerifier(cfg)
	if err != nil {
		t.Fatal(err)
	}
	runVerifier(t, v.Run, v.Ready, wait)
	return v
}

// fakePublisher records published messages, events decoded, or fails with
// err.
type fakePublisher struct {
	mu     sync.Mutex
	events []schemas.Event
	dead   []relay.Message // bound for the dead-letter queue
	err    error
	delay  time.Duration
}

func (p *fakePublisher) Publish(ctx context.Context, msgs []relay.Message) error {
	if p.delay > 0 {
		select {
		case <-time.After(p.delay):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return p.err
	}
	for _, m := range msgs {
		if m.DeadLetterReason != "" {
			p.dead = append(p.dead, m)
			continue
		}
		e, err := m.Event()
		if err != nil {
			return fmt.Errorf("fake publisher: %w", err)
		}
		p.events = append(p.events, *e)
	}
	return nil
}

func (p *fakePublisher) deadLettered() []relay.Message {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.dead)
}

func (p *fakePublisher) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.events)
}

// newQueue opens an embedded queue in a new file with a group commit in
// front of it, as the ingress publishes; both close when the test ends.
func newQueue(t testing.TB) (*sqlite.Queue, *relay.Batcher) {
	t.Helper()
	q := sqlitetest.Open(t, sqlite.Config{})
	b, err := relay.NewBatcher(q, relay.BatchConfig{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	go b.Run(context.Background())
	t.Cleanup(b.Close)
	return q, b
}

// serve runs s on a new loopback listener and returns its address and a
// stop function: stop ends Serve's context with cause and returns what
// Serve returned. The test's end stops it too.
func serve(t *testing.T, s *ingress.Server) (string, func(cause error) error) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx, l) }()
	var (
		once     sync.Once
		serveErr error
	)
	stop := func(cause error) error {
		once.Do(func() {
			cancel(cause)
			serveErr = <-served
		})
		return serveErr
	}
	t.Cleanup(func() { stop(nil) })
	return l.Addr().String(), stop
}

// postCallConnected posts callConnected with the static verifier's token
// to the ingress listening on addr, over HTTP, and returns the status.
func postCallConnected(addr string) (int, error) {
	req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/acs/callbacks", strings.NewReader(callConnected))
	req.Header.Set("X-Test-Token", "ok")
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

// newLogger logs to w as JSON, debug lines included.
func newLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// newServer builds an ingress with the given verifiers and publisher and
// returns its handler and log.
func newServer(t testing.TB, cfg ingress.Config) (http.Handler, *testlog.Buffer) {
	t.Helper()
	logs := &testlog.Buffer{}
	cfg.Logger = newLogger(logs)
	s, err := ingress.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s.Handler(), logs
}

const callConnected = `[{"id":"evt-1","source":"calling/callConnections/c1","type":"Microsoft.Communication.CallConnected","specversion":"1.0","datacontenttype":"application/json","time":"2024-05-14T17:30:12Z","subject":"calling/callConnections/c1","data":{"callConnectionId":"c1","serverCallId":"s1","correlationId":"corr-1"}}]`

type response struct {
	status int
	header http.Header
	body   map[string]any
	raw    string
}

// post sends a request to h and decodes the JSON answer.
func post(t testing.TB, h http.Handler, path, token, contentType, body string) response {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, path, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	return do(t, h, req)
}

func do(t testing.TB, h http.Handler, req *http.Request) response {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	raw, _ := io.ReadAll(rec.Body)
	r := response{status: rec.Code, header: rec.Header(), raw: string(raw)}
	json.Unmarshal(raw, &r.body)
	return r
}

func mustPrefixes(t testing.TB, cidrs ...string) []netip.Prefix {
	t.Helper()
	var out []netip.Prefix
	for _, c := range cidrs {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, p)
	}
	return out
}
