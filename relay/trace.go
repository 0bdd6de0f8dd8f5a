package relay

import (
	"context"
	"encoding/hex"
	"errors"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// TraceContext is the W3C trace context a message carries across the
// queue: the application properties traceparent, tracestate and
// Diagnostic-Id (see PropTraceParent), which Microsoft's Service Bus SDKs
// and OpenTelemetry's messaging instrumentations read, so a consumer in any
// language continues the trace that sent the message.
type TraceContext struct {
	// Parent is the traceparent: "00-<trace id>-<span id>-<flags>".
	Parent string
	// State is the tracestate, "" when there is none or it is longer than
	// MaxTraceState.
	State string
}

// MaxTraceState is the longest tracestate a message carries (the length
// W3C Trace Context asks every hop to propagate); a longer one, which a
// request's sender chose, is left out rather than copied into every
// message and event.
const MaxTraceState = 512

// TraceContextOf returns the trace context of sc; its zero value when sc is
// not valid.
func TraceContextOf(sc trace.SpanContext) TraceContext {
	if !sc.IsValid() {
		return TraceContext{}
	}
	tid, sid := sc.TraceID(), sc.SpanID()
	var b [55]byte
	b[0], b[1], b[2] = '0', '0', '-'
	hex.Encode(b[3:35], tid[:])
	b[35] = '-'
	hex.Encode(b[36:52], sid[:])
	b[52] = '-'
	hex.Encode(b[53:55], []byte{byte(sc.TraceFlags())})
	tc := TraceContext{Parent: string(b[:])}
	if st := sc.TraceState().String(); len(st) <= MaxTraceState {
		tc.State = st
	}
	return tc
}

// Apply sets tc on m: PropTraceParent and PropDiagnosticID to Parent, and
// PropTraceState to State when there is one. A zero tc changes nothing.
func (tc TraceContext) Apply(m *Message) {
	if tc.Parent == "" {
		return
	}
	if m.Properties == nil {
		m.Properties = make(map[string]any, 3)
	}
	m.Properties[PropTraceParent] = tc.Parent
	m.Properties[PropDiagnosticID] = tc.Parent
	if tc.State != "" {
		m.Properties[PropTraceState] = tc.State
	}
}

// RemoteSpanContext returns the span context that sent a message with the
// application properties props: its traceparent, or Diagnostic-Id where
// there is none (a message sent by an Azure SDK in another language), with
// its tracestate. It is not valid when the message carries none.
func RemoteSpanContext(props map[string]any) trace.SpanContext {
	if props == nil {
		return trace.SpanContext{}
	}
	ctx := propagation.TraceContext{}.Extract(context.Background(), propertyCarrier(props))
	return trace.SpanContextFromContext(ctx)
}

// propertyCarrier reads a message's trace context for the W3C propagator.
type propertyCarrier map[string]any

func (c propertyCarrier) Get(key string) string {
	v, _ := c[key].(string)
	if v == "" && key == PropTraceParent {
		v, _ = c[PropDiagnosticID].(string)
	}
	return v
}

func (c propertyCarrier) Set(string, string) {}

func (c propertyCarrier) Keys() []string { return []string{PropTraceParent, PropTraceState} }

// TraceCommits returns a BatchSender that records each SendBatch through s
// — a group commit — as a span "commit <destination>" (kind client,
// messaging.operation.type send) with attrs (messaging.system,
// messaging.destination.name, server.address) and the message count.
//
// A commit carries the messages of many requests, each from its own trace
// (its TraceContext): its span is a child of the first sampled one and
// links to all of them, so it shows in a request's trace and is found
// from every other. When no request it carries is sampled, nobody records
// their traces, and no span is made. Off (tp nil), s is returned as it is.
func TraceCommits(s BatchSender, tp trace.TracerProvider, destination string, attrs ...attribute.KeyValue) BatchSender {
	if tp == nil {
		return s
	}
	return &tracedSender{
		next:   s,
		tracer: tp.Tracer(instrumentation),
		name:   "commit " + destination,
		attrs: append(append([]attribute.KeyValue{}, attrs...),
			semconv.MessagingOperationTypeSend, semconv.MessagingOperationName("commit")),
	}
}

// instrumentation names hookbridge's tracers.
const instrumentation = "github.com/hookbridge/hookbridge"

type tracedSender struct {
	next   BatchSender
	tracer trace.Tracer
	name   string
	attrs  []attribute.KeyValue
}

func (t *tracedSender) SendBatch(ctx context.Context, msgs []Message) error {
	var parent trace.SpanContext
	var links []trace.Link
	var last trace.SpanID
	for i := range msgs {
		sc := RemoteSpanContext(msgs[i].Properties)
		// A request's messages are adjacent and share one context.
		if !sc.IsValid() || sc.SpanID() == last {
			continue
		}
		last = sc.SpanID()
		if sc.IsSampled() && !parent.IsValid() {
			parent = sc
			continue
		}
		links = append(links, trace.Link{SpanContext: sc})
	}
	if !parent.IsValid() {
		return t.next.SendBatch(ctx, msgs)
	}
	ctx, span := t.tracer.Start(trace.ContextWithRemoteSpanContext(ctx, parent), t.name,
		trace.WithSpanKind(trace.SpanKindClient), trace.WithLinks(links...),
		trace.WithAttributes(t.attrs...), trace.WithAttributes(semconv.MessagingBatchMessageCount(len(msgs))))
	defer span.End()
	err := t.next.SendBatch(ctx, msgs)
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
		span.SetAttributes(semconv.ErrorTypeKey.String(ErrorType(err)))
	}
	return err
}

// ErrorType classifies a queue error for spans' error.type: what an
// operator filters on, not the error's text.
func ErrorType(err error) string {
	switch {
	case errors.Is(err, ErrMessageTooLarge):
		return "message_too_large"
	case errors.Is(err, ErrLockLost):
		return "lock_lost"
	case errors.Is(err, ErrClosed):
		return "closed"
	case errors.Is(err, ErrUnavailable):
		return "queue_unavailable"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	}
	return "_OTHER"
}
