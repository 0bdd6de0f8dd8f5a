package consumer_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/hookbridge/hookbridge/consumer"
	"github.com/hookbridge/hookbridge/internal/sqlitetest"
	"github.com/hookbridge/hookbridge/internal/testrun"
	"github.com/hookbridge/hookbridge/internal/testwait"
	"github.com/hookbridge/hookbridge/relay"
	"github.com/hookbridge/hookbridge/relay/sqlite"
)

// traceBackend records the traceparent header of each request and answers
// with the status its path names.
type traceBackend struct {
	*httptest.Server
	mu      sync.Mutex
	parents []string
}

func newTraceBackend(t *testing.T) *traceBackend {
	b := &traceBackend{}
	b.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.mu.Lock()
		b.parents = append(b.parents, r.Header.Get("traceparent"))
		b.mu.Unlock()
		if strings.HasSuffix(r.URL.Path, "/503") {
			http.Error(w, "the event was {secret body}", http.StatusServiceUnavailable)
		}
	}))
	t.Cleanup(b.Close)
	return b
}

func (b *traceBackend) received() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.parents...)
}

func spanAttrs(s sdktrace.ReadOnlySpan) map[string]string {
	m := map[string]string{}
	for _, kv := range s.Attributes() {
		m[string(kv.Key)] = kv.Value.Emit()
	}
	return m
}

// TestTracedDelivery runs a traced worker on the embedded queue: each
// delivery is a consumer span continuing the context its message carries
// (traceparent, or Diagnostic-Id alone), with the POST to the backend and
// the settlement inside, and the backend receives the client span's
// traceparent. A failed delivery says why on its spans, never with the
// backend's answer.
func TestTracedDelivery(t *testing.T) {
	t.Parallel()
	fromTraceparent := trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{0xa1}, SpanID: trace.SpanID{0xa2}, TraceFlags: trace.FlagsSampled})
	tests := []struct {
		name    string
		path    string
		carry   func(m *relay.Message)
		parent  trace.SpanContext // zero: a new trace
		outcome string
		failed  bool
	}{
		{"traceparent", "/ok", func(m *relay.Message) { relay.TraceContextOf(fromTraceparent).Apply(m) }, fromTraceparent, "completed", false},
		{"Diagnostic-Id alone", "/ok", func(m *relay.Message) {
			m.Properties[relay.PropDiagnosticID] = "00-b1000000000000000000000000000000-b200000000000000-01"
		}, trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{0xb1}, SpanID: trace.SpanID{0xb2}, TraceFlags: trace.FlagsSampled}), "completed", false},
		{"no context: a new trace", "/ok", func(*relay.Message) {}, trace.SpanContext{}, "completed", false},
		{"backend failing", "/503", func(m *relay.Message) { relay.TraceContextOf(fromTraceparent).Apply(m) }, fromTraceparent, "retried", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rec := tracetest.NewSpanRecorder()
			tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
			q := sqlitetest.Open(t, sqlite.Config{})
			m := event(t, "evt-"+strings.ReplaceAll(tt.name, " ", "-"), "call-7")
			tt.carry(&m)
			if err := q.SendBatch(context.Background(), []relay.Message{m}); err != nil {
				t.Fatal(err)
			}
			backend := newTraceBackend(t)
			target, err := consumer.NewHTTP(consumer.HTTPConfig{URL: backend.URL + tt.path, TracerProvider: tp})
			if err != nil {
				t.Fatal(err)
			}
			w, err := consumer.New(q, target, consumer.Config{MinBackoff: time.Minute, TracerProvider: tp, TraceQueue: "q.db",
				TraceQueueAttributes: []attribute.KeyValue{attribute.String("messaging.system", "sqlite")}})
			if err != nil {
				t.Fatal(err)
			}
			stop := testrun.Start(t, w.Run)
			var process, settle, post sdktrace.ReadOnlySpan
			testwait.Until(t, 10*time.Second, "the process, settle and POST spans", func() bool {
				for _, s := range rec.Ended() {
					switch s.Name() {
					case "process q.db":
						process = s
					case "settle q.db":
						settle = s
					case "POST":
						post = s
					}
				}
				return process != nil && settle != nil && post != nil
			})
			stop()

			if process.SpanKind() != trace.SpanKindConsumer {
				t.Errorf("process span kind %v", process.SpanKind())
			}
			if tt.parent.IsValid() {
				if process.Parent().SpanID() != tt.parent.SpanID() || process.SpanContext().TraceID() != tt.parent.TraceID() {
					t.Errorf("process span %v parent %v, want a child of %v", process.SpanContext(), process.Parent(), tt.parent)
				}
			} else if process.Parent().IsValid() {
				t.Errorf("process span of a message without context has parent %v", process.Parent())
			}
			for _, child := range []sdktrace.ReadOnlySpan{settle, post} {
				if child.Parent().SpanID() != process.SpanContext().SpanID() {
					t.Errorf("%s is not inside the process span", child.Name())
				}
			}
			got := backend.received()
			if want := relay.TraceContextOf(post.SpanContext()).Parent; len(got) != 1 || got[0] != want {
				t.Errorf("backend received traceparent %v, want the POST span's %s", got, want)
			}
			pa := spanAttrs(process)
			for k, want := range map[string]string{"messaging.system": "sqlite", "messaging.operation.type": "process", "messaging.message.id": m.ID,
				"cloudevents.event_id": m.ID, "cloudevents.event_type": "Microsoft.Communication.CallConnected",
				"hookbridge.partition_key": "call-7", "hookbridge.delivery_count": "1", "hookbridge.outcome": tt.outcome} {
				if pa[k] != want {
					t.Errorf("process span %s = %q, want %q", k, pa[k], want)
				}
			}
			ca := spanAttrs(post)
			if ca["http.request.method"] != "POST" || ca["server.address"] != "127.0.0.1" || ca["url.full"] != backend.URL+tt.path || post.SpanKind() != trace.SpanKindClient {
				t.Errorf("POST span %v kind %v", ca, post.SpanKind())
			}
			if tt.failed {
				if process.Status().Code != codes.Error || process.Status().Description != "retried: delivery_failed" {
					t.Errorf("process span status %+v", process.Status())
				}
				if post.Status().Code != codes.Error || ca["http.response.status_code"] != "503" || ca["error.type"] != "503" {
					t.Errorf("POST span status %+v attributes %v", post.Status(), ca)
				}
				if pa["hookbridge.retry_in_ms"] == "" || spanAttrs(settle)["messaging.operation.name"] != "abandon" {
					t.Errorf("retry not recorded: %v / %v", pa, spanAttrs(settle))
				}
			} else {
				if process.Status().Code == codes.Error || post.Status().Code == codes.Error {
					t.Errorf("statuses %v %v on a delivery that succeeded", process.Status(), post.Status())
				}
				if spanAttrs(settle)["messaging.operation.name"] != "complete" {
					t.Errorf("settle span %v", spanAttrs(settle))
				}
			}
			for _, s := range rec.Ended() {
				if strings.Contains(s.Status().Description, "secret body") {
					t.Errorf("span %s status holds the backend's answer: %q", s.Name(), s.Status().Description)
				}
				for k, v := range spanAttrs(s) {
					if strings.Contains(v, "secret body") {
						t.Errorf("span %s attribute %s holds the backend's answer", s.Name(), k)
					}
				}
			}
		})
	}
}

// TestTracingOffSendsNoTraceparent: an untraced HTTP target sends no trace
// context, even for a message that carries one.
func TestTracingOffSendsNoTraceparent(t *testing.T) {
	t.Parallel()
	backend := newTraceBackend(t)
	target, err := consumer.NewHTTP(consumer.HTTPConfig{URL: backend.URL})
	if err != nil {
		t.Fatal(err)
	}
	m := event(t, "evt-off", "call-1")
	relay.TraceContext{Parent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}.Apply(&m)
	src := newFakeSource(m)
	w, err := consumer.New(src, target, consumer.Config{})
	if err != nil {
		t.Fatal(err)
	}
	testrun.Start(t, w.Run)
	waitSettled(t, src, 1)
	if got := backend.received(); len(got) != 1 || got[0] != "" {
		t.Errorf("backend received traceparent %q with tracing off", got)
	}
}
