package relay_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/hookbridge/hookbridge/relay"
)

func spanContext(t *testing.T, traceID, spanID byte, sampled bool, state string) trace.SpanContext {
	t.Helper()
	cfg := trace.SpanContextConfig{TraceID: trace.TraceID{traceID, 1}, SpanID: trace.SpanID{spanID, 2}, Remote: true}
	if sampled {
		cfg.TraceFlags = trace.FlagsSampled
	}
	if state != "" {
		ts, err := trace.ParseTraceState(state)
		if err != nil {
			t.Fatal(err)
		}
		cfg.TraceState = ts
	}
	return trace.NewSpanContext(cfg)
}

func TestTraceContext(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("k=", 1) + strings.Repeat("v", 255) + ",l=" + strings.Repeat("w", 255) + ",m=" + strings.Repeat("x", 10)
	tests := []struct {
		name      string
		props     func(t *testing.T) map[string]any
		wantValid bool
		want      relay.TraceContext
	}{
		{"applied context round-trips", func(t *testing.T) map[string]any {
			m := relay.Message{}
			relay.TraceContextOf(spanContext(t, 0xab, 0xcd, true, "congo=t61rcWkgMzE")).Apply(&m)
			if m.Properties[relay.PropDiagnosticID] != m.Properties[relay.PropTraceParent] {
				t.Errorf("Diagnostic-Id %v differs from traceparent %v", m.Properties[relay.PropDiagnosticID], m.Properties[relay.PropTraceParent])
			}
			return m.Properties
		}, true, relay.TraceContext{Parent: "00-ab010000000000000000000000000000-cd02000000000000-01", State: "congo=t61rcWkgMzE"}},
		{"not sampled is kept", func(t *testing.T) map[string]any {
			m := relay.Message{Properties: map[string]any{"other": "x"}}
			relay.TraceContextOf(spanContext(t, 1, 2, false, "")).Apply(&m)
			if _, ok := m.Properties[relay.PropTraceState]; ok {
				t.Error("an empty tracestate was set")
			}
			return m.Properties
		}, true, relay.TraceContext{Parent: "00-01010000000000000000000000000000-0202000000000000-00"}},
		{"Diagnostic-Id alone, as a .NET or JavaScript producer sends it", func(*testing.T) map[string]any {
			return map[string]any{relay.PropDiagnosticID: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
		}, true, relay.TraceContext{Parent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}},
		{"traceparent wins over Diagnostic-Id", func(*testing.T) map[string]any {
			return map[string]any{relay.PropTraceParent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
				relay.PropDiagnosticID: "00-11111111111111111111111111111111-2222222222222222-01"}
		}, true, relay.TraceContext{Parent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}},
		{"a legacy hierarchical Diagnostic-Id is no context", func(*testing.T) map[string]any {
			return map[string]any{relay.PropDiagnosticID: "|4bf92f3577b34da6a3ce929d0e0e4736.1."}
		}, false, relay.TraceContext{}},
		{"garbage traceparent", func(*testing.T) map[string]any {
			return map[string]any{relay.PropTraceParent: "00-zz-yy-01"}
		}, false, relay.TraceContext{}},
		{"non-string values", func(*testing.T) map[string]any {
			return map[string]any{relay.PropTraceParent: int64(7)}
		}, false, relay.TraceContext{}},
		{"no properties", func(*testing.T) map[string]any { return nil }, false, relay.TraceContext{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			sc := relay.RemoteSpanContext(tt.props(t))
			if sc.IsValid() != tt.wantValid {
				t.Fatalf("valid = %v, want %v", sc.IsValid(), tt.wantValid)
			}
			if got := relay.TraceContextOf(sc); got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}

	// A tracestate longer than MaxTraceState is left out; a zero context
	// changes nothing.
	tc := relay.TraceContextOf(spanContext(t, 1, 2, true, long))
	if tc.Parent == "" || tc.State != "" {
		t.Errorf("long tracestate: %+v", tc)
	}
	var m relay.Message
	relay.TraceContext{}.Apply(&m)
	if m.Properties != nil {
		t.Errorf("a zero trace context set %v", m.Properties)
	}
}

// senderFunc adapts a function to relay.BatchSender.
type senderFunc func(ctx context.Context, msgs []relay.Message) error

func (f senderFunc) SendBatch(ctx context.Context, msgs []relay.Message) error { return f(ctx, msgs) }

func TestTraceCommits(t *testing.T) {
	t.Parallel()
	a := spanContext(t, 0xa, 0xa, true, "")  // sampled, two messages
	b := spanContext(t, 0xb, 0xb, false, "") // not sampled
	c := spanContext(t, 0xc, 0xc, true, "")  // sampled
	msg := func(id string, sc trace.SpanContext) relay.Message {
		m := relay.Message{ID: id, Properties: map[string]any{}}
		relay.TraceContextOf(sc).Apply(&m)
		return m
	}
	untraced := relay.Message{ID: "plain"}
	batch := []relay.Message{msg("a1", a), msg("a2", a), untraced, msg("b1", b), msg("c1", c)}
	queueAttrs := []attribute.KeyValue{attribute.String("messaging.system", "sqlite"), attribute.String("messaging.destination.name", "q.db")}

	tests := []struct {
		name    string
		msgs    []relay.Message
		err     error
		span    bool
		parent  trace.SpanContext
		links   []trace.SpanContext
		errType string
	}{
		{"parent is the first sampled request, links the others", batch, nil, true, a, []trace.SpanContext{b, c}, ""},
		{"a failed commit is an error", batch, fmt.Errorf("disk full: %w", relay.ErrUnavailable), true, a, []trace.SpanContext{b, c}, "queue_unavailable"},
		{"nobody sampled: no span", []relay.Message{msg("b1", b), untraced}, nil, false, trace.SpanContext{}, nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rec := tracetest.NewSpanRecorder()
			tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
			var inner trace.SpanContext
			called := 0
			s := relay.TraceCommits(senderFunc(func(ctx context.Context, msgs []relay.Message) error {
				called++
				inner = trace.SpanContextFromContext(ctx)
				if len(msgs) != len(tt.msgs) {
					t.Errorf("%d messages passed on, want %d", len(msgs), len(tt.msgs))
				}
				return tt.err
			}), tp, "q.db", queueAttrs...)
			if err := s.SendBatch(context.Background(), tt.msgs); !errors.Is(err, tt.err) {
				t.Fatalf("err = %v, want %v", err, tt.err)
			}
			if called != 1 {
				t.Fatalf("inner sender called %d times", called)
			}
			spans := rec.Ended()
			if !tt.span {
				if len(spans) != 0 {
					t.Fatalf("%d spans for a commit nobody samples", len(spans))
				}
				return
			}
			if len(spans) != 1 {
				t.Fatalf("%d spans, want 1", len(spans))
			}
			sp := spans[0]
			if sp.Name() != "commit q.db" || sp.SpanKind() != trace.SpanKindClient {
				t.Errorf("span %q kind %v", sp.Name(), sp.SpanKind())
			}
			if sp.Parent().SpanID() != tt.parent.SpanID() || sp.SpanContext().TraceID() != tt.parent.TraceID() {
				t.Errorf("parent %v trace %v, want %v", sp.Parent().SpanID(), sp.SpanContext().TraceID(), tt.parent)
			}
			if inner.SpanID() != sp.SpanContext().SpanID() {
				t.Error("the inner send does not run inside the commit span")
			}
			var links []trace.SpanID
			for _, l := range sp.Links() {
				links = append(links, l.SpanContext.SpanID())
			}
			if len(links) != len(tt.links) {
				t.Fatalf("links %v, want %v", links, tt.links)
			}
			for i, l := range tt.links {
				if links[i] != l.SpanID() {
					t.Errorf("link %d = %v, want %v", i, links[i], l.SpanID())
				}
			}
			attrs := map[attribute.Key]attribute.Value{}
			for _, kv := range sp.Attributes() {
				attrs[kv.Key] = kv.Value
			}
			if attrs["messaging.batch.message_count"].AsInt64() != int64(len(tt.msgs)) || attrs["messaging.system"].AsString() != "sqlite" ||
				attrs["messaging.operation.type"].AsString() != "send" || attrs["messaging.destination.name"].AsString() != "q.db" {
				t.Errorf("attributes %v", attrs)
			}
			if tt.errType != "" {
				if sp.Status().Code != codes.Error || attrs["error.type"].AsString() != tt.errType {
					t.Errorf("status %v, error.type %v", sp.Status(), attrs["error.type"])
				}
			} else if sp.Status().Code == codes.Error {
				t.Errorf("status %v on a commit that succeeded", sp.Status())
			}
		})
	}

	// Off, the sender is returned as it is.
	var plain relay.BatchSender = senderFunc(func(context.Context, []relay.Message) error { return nil })
	if got := relay.TraceCommits(plain, nil, "q"); fmt.Sprintf("%p", got) != fmt.Sprintf("%p", plain) {
		t.Error("tracing off wraps the sender")
	}
}
