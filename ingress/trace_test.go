package ingress_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/hookbridge/hookbridge/ingress"
	"github.com/hookbridge/hookbridge/relay"
)

// capturePublisher keeps the messages of every publish, or fails with err.
type capturePublisher struct {
	mu   sync.Mutex
	msgs []relay.Message
	err  error
}

func (p *capturePublisher) Publish(_ context.Context, msgs []relay.Message) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return p.err
	}
	p.msgs = append(p.msgs, msgs...)
	return nil
}

func (p *capturePublisher) published() []relay.Message {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]relay.Message(nil), p.msgs...)
}

const testAPIKey = "trace-test-key-0123456789"

// tracedServer is an ingress on pub with an API key on /acs/callbacks,
// traced into the returned recorder (nil: tracing off).
func tracedServer(t *testing.T, pub ingress.Publisher, traced bool) (http.Handler, *tracetest.SpanRecorder) {
	t.Helper()
	v, err := ingress.NewAPIKeyVerifier(ingress.ParseAPIKeys(testAPIKey))
	if err != nil {
		t.Fatal(err)
	}
	cfg := ingress.Config{Publisher: pub, ACSVerifiers: []ingress.Verifier{v}, EventGridVerifiers: []ingress.Verifier{v}}
	var rec *tracetest.SpanRecorder
	if traced {
		rec = tracetest.NewSpanRecorder()
		cfg.TracerProvider = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
		cfg.TraceQueue = "events.db"
		cfg.TraceQueueAttributes = []attribute.KeyValue{attribute.String("messaging.system", "sqlite"), attribute.String("messaging.destination.name", "events.db")}
	}
	h, _ := newServer(t, cfg)
	return h, rec
}

func attrsOf(s sdktrace.ReadOnlySpan) map[string]string {
	m := map[string]string{}
	for _, kv := range s.Attributes() {
		m[string(kv.Key)] = kv.Value.Emit()
	}
	return m
}

func spanNamed(t *testing.T, spans []sdktrace.ReadOnlySpan, name string) sdktrace.ReadOnlySpan {
	t.Helper()
	for _, s := range spans {
		if s.Name() == name {
			return s
		}
	}
	var names []string
	for _, s := range spans {
		names = append(names, s.Name())
	}
	t.Fatalf("no span %q among %v", name, names)
	return nil
}

const incomingParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

// TestTracedRequest follows one accepted callback: the server span
// continues the sender's traceparent, verification and the send are its
// children, and the message and the event both carry the send span's
// context (traceparent, tracestate, Diagnostic-Id), for the worker to
// continue. No attribute holds the API key.
func TestTracedRequest(t *testing.T) {
	t.Parallel()
	pub := &capturePublisher{}
	h, rec := tracedServer(t, pub, true)
	req := httptest.NewRequest(http.MethodPost, "/acs/callbacks?key="+testAPIKey, strings.NewReader(callConnected))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("traceparent", incomingParent)
	req.Header.Set("tracestate", "rojo=00f067aa0ba902b7")
	if r := do(t, h, req); r.status != http.StatusOK {
		t.Fatalf("status %d: %s", r.status, r.raw)
	}
	spans := rec.Ended()
	server := spanNamed(t, spans, "POST /acs/callbacks")
	verify := spanNamed(t, spans, "verify")
	send := spanNamed(t, spans, "send events.db")

	if server.SpanKind() != trace.SpanKindServer || server.SpanContext().TraceID().String() != "4bf92f3577b34da6a3ce929d0e0e4736" ||
		server.Parent().SpanID().String() != "00f067aa0ba902b7" || !server.Parent().IsRemote() {
		t.Errorf("server span %v kind %v parent %v: does not continue the incoming traceparent", server.SpanContext(), server.SpanKind(), server.Parent())
	}
	for _, child := range []sdktrace.ReadOnlySpan{verify, send} {
		if child.Parent().SpanID() != server.SpanContext().SpanID() {
			t.Errorf("%s is not a child of the request's span", child.Name())
		}
	}
	if send.SpanKind() != trace.SpanKindProducer {
		t.Errorf("send span kind %v", send.SpanKind())
	}
	sa := attrsOf(server)
	for k, want := range map[string]string{"http.request.method": "POST", "http.route": "/acs/callbacks", "url.path": "/acs/callbacks",
		"http.response.status_code": "200", "url.scheme": "http", "hookbridge.events": "1"} {
		if sa[k] != want {
			t.Errorf("server span %s = %q, want %q", k, sa[k], want)
		}
	}
	na := attrsOf(send)
	for k, want := range map[string]string{"messaging.system": "sqlite", "messaging.destination.name": "events.db", "messaging.operation.type": "send",
		"cloudevents.event_id": "evt-1", "cloudevents.event_type": "Microsoft.Communication.CallConnected",
		"hookbridge.partition_key": "corr-1", "messaging.message.id": relay.MessageID("calling/callConnections/c1", "evt-1")} {
		if na[k] != want {
			t.Errorf("send span %s = %q, want %q", k, na[k], want)
		}
	}
	if va := attrsOf(verify); va["hookbridge.verifier"] != "api-key" {
		t.Errorf("verify span attributes %v", va)
	}
	for _, s := range spans {
		for k, v := range attrsOf(s) {
			if strings.Contains(v, testAPIKey) {
				t.Errorf("span %s attribute %s holds the API key", s.Name(), k)
			}
		}
	}

	msgs := pub.published()
	if len(msgs) != 1 {
		t.Fatalf("%d messages published", len(msgs))
	}
	want := relay.TraceContextOf(send.SpanContext())
	if got := relay.TraceContextOf(relay.RemoteSpanContext(msgs[0].Properties)); got != want || want.State != "rojo=00f067aa0ba902b7" {
		t.Errorf("message carries %+v, want the send span's %+v", got, want)
	}
	if msgs[0].Properties[relay.PropDiagnosticID] != want.Parent {
		t.Errorf("Diagnostic-Id %v, want %s", msgs[0].Properties[relay.PropDiagnosticID], want.Parent)
	}
	var body map[string]any
	json.Unmarshal(msgs[0].Body, &body)
	if body["traceparent"] != want.Parent || body["tracestate"] != want.State {
		t.Errorf("event extensions traceparent=%v tracestate=%v, want %+v", body["traceparent"], body["tracestate"], want)
	}
}

// TestTracingOffChangesNothing: without a tracer provider messages and
// events carry no trace context, even when the sender sent one.
func TestTracingOffChangesNothing(t *testing.T) {
	t.Parallel()
	pub := &capturePublisher{}
	h, _ := tracedServer(t, pub, false)
	req := httptest.NewRequest(http.MethodPost, "/acs/callbacks?key="+testAPIKey, strings.NewReader(callConnected))
	req.Header.Set("traceparent", incomingParent)
	if r := do(t, h, req); r.status != http.StatusOK {
		t.Fatalf("status %d", r.status)
	}
	m := pub.published()[0]
	for _, k := range []string{relay.PropTraceParent, relay.PropTraceState, relay.PropDiagnosticID} {
		if _, ok := m.Properties[k]; ok {
			t.Errorf("property %s set with tracing off", k)
		}
	}
	if strings.Contains(string(m.Body), "traceparent") {
		t.Errorf("event body carries a trace context with tracing off: %s", m.Body)
	}
}

func TestTracedFailures(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		query      string
		pubErr     error
		status     int
		cause      string
		failing    string // the span that failed
		serverErr  bool   // a 5xx makes the server span an error
		noSendSpan bool
	}{
		{name: "bad credentials", query: "?key=wrong-key-0000000000", status: 401, cause: "invalid_api_key", failing: "verify", noSendSpan: true},
		{name: "queue down", query: "?key=" + testAPIKey, pubErr: fmt.Errorf("disk full: %w", relay.ErrUnavailable), status: 503,
			cause: "queue_unavailable", failing: "send events.db", serverErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h, rec := tracedServer(t, &capturePublisher{err: tt.pubErr}, true)
			req := httptest.NewRequest(http.MethodPost, "/acs/callbacks"+tt.query, strings.NewReader(callConnected))
			r := do(t, h, req)
			if r.status != tt.status {
				t.Fatalf("status %d, want %d", r.status, tt.status)
			}
			spans := rec.Ended()
			server := spanNamed(t, spans, "POST /acs/callbacks")
			sa := attrsOf(server)
			if sa["hookbridge.cause"] != tt.cause || sa["http.response.status_code"] != fmt.Sprint(tt.status) || sa["hookbridge.error_id"] != r.body["id"] {
				t.Errorf("server span attributes %v, want cause %s and the response's error id %v", sa, tt.cause, r.body["id"])
			}
			if (server.Status().Code == codes.Error) != tt.serverErr {
				t.Errorf("server span status %v for a %d", server.Status(), tt.status)
			}
			if f := spanNamed(t, spans, tt.failing); f.Status().Code != codes.Error || attrsOf(f)["error.type"] != tt.cause {
				t.Errorf("%s span status %v attributes %v", f.Name(), f.Status(), attrsOf(f))
			}
			if tt.noSendSpan {
				for _, s := range spans {
					if strings.HasPrefix(s.Name(), "send ") {
						t.Error("a refused request has a send span")
					}
				}
			}
		})
	}
}

// TestTracedRequestWithoutParent starts a new trace, and an event that
// brought a traceparent extension of its own is linked to and its
// extension replaced.
func TestTracedRequestWithoutParent(t *testing.T) {
	t.Parallel()
	pub := &capturePublisher{}
	h, rec := tracedServer(t, pub, true)
	own := "00-11111111111111111111111111111111-2222222222222222-01"
	body := strings.Replace(callConnected, `"specversion":"1.0"`, `"specversion":"1.0","traceparent":"`+own+`"`, 1)
	req := httptest.NewRequest(http.MethodPost, "/acs/callbacks?key="+testAPIKey, strings.NewReader(body))
	if r := do(t, h, req); r.status != http.StatusOK {
		t.Fatalf("status %d: %s", r.status, r.raw)
	}
	spans := rec.Ended()
	server := spanNamed(t, spans, "POST /acs/callbacks")
	if server.Parent().IsValid() {
		t.Errorf("a request without traceparent has parent %v", server.Parent())
	}
	send := spanNamed(t, spans, "send events.db")
	if l := send.Links(); len(l) != 1 || l[0].SpanContext.TraceID().String() != "11111111111111111111111111111111" {
		t.Errorf("send span links %v, want the event's own traceparent", l)
	}
	var e map[string]any
	json.Unmarshal(pub.published()[0].Body, &e)
	if e["traceparent"] != relay.TraceContextOf(send.SpanContext()).Parent {
		t.Errorf("event traceparent %v, want the send span's", e["traceparent"])
	}
}
