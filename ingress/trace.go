package ingress

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"

	"github.com/labstack/echo/v4"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/hookbridge/hookbridge/relay"
	"github.com/hookbridge/hookbridge/schemas"
)

// Span attributes of hookbridge's own (the others follow OpenTelemetry's
// HTTP and messaging semantic conventions).
const (
	attrPartitionKey = attribute.Key("hookbridge.partition_key")
	attrVerifier     = attribute.Key("hookbridge.verifier")
	attrCause        = attribute.Key("hookbridge.cause")
	attrErrorID      = attribute.Key("hookbridge.error_id")
	attrEvents       = attribute.Key("hookbridge.events")
	attrDeadLettered = attribute.Key("hookbridge.dead_lettered")
)

// Extension attributes of the CloudEvents distributed tracing extension.
const (
	extTraceParent = "traceparent"
	extTraceState  = "tracestate"
)

// tracer traces requests; a nil *tracer is tracing off.
type tracer struct {
	t         trace.Tracer
	sendName  string
	sendAttrs []attribute.KeyValue
}

func newTracer(tp trace.TracerProvider, queue string, attrs []attribute.KeyValue) *tracer {
	if tp == nil {
		return nil
	}
	if queue == "" {
		queue = "queue"
	}
	return &tracer{
		t:         tp.Tracer("github.com/hookbridge/hookbridge/ingress"),
		sendName:  "send " + queue,
		sendAttrs: append(append([]attribute.KeyValue{}, attrs...), semconv.MessagingOperationTypeSend, semconv.MessagingOperationName("send")),
	}
}

// startRequest starts a request's server span, continuing the trace of an
// incoming W3C traceparent header (a new trace without one), and puts it in
// the request's context. Only the path is recorded, never the query (which
// may hold an API key) nor any header but traceparent.
func (t *tracer) startRequest(c echo.Context) trace.Span {
	req := c.Request()
	ctx := propagation.TraceContext{}.Extract(req.Context(), propagation.HeaderCarrier(req.Header))
	scheme := "http"
	if req.TLS != nil {
		scheme = "https"
	}
	route := c.Path()
	ctx, span := t.t.Start(ctx, req.Method+" "+route, trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(
		semconv.HTTPRequestMethodKey.String(req.Method),
		semconv.HTTPRoute(route),
		semconv.URLPath(req.URL.Path),
		semconv.URLScheme(scheme),
		semconv.ClientAddress(c.RealIP()),
	))
	c.SetRequest(req.WithContext(ctx))
	return span
}

// endRequest ends a request's span with its outcome: the status, and on a
// failure its cause and error id (the log line's), an error for a 5xx.
func (t *tracer) endRequest(span trace.Span, c echo.Context, rc *reqContext, herr *Error) {
	status := c.Response().Status
	attrs := make([]attribute.KeyValue, 1, 5)
	attrs[0] = semconv.HTTPResponseStatusCode(status)
	if rc != nil && rc.events >= 0 {
		attrs = append(attrs, attrEvents.Int(rc.events))
	}
	if herr != nil {
		attrs = append(attrs, attrCause.String(herr.Cause), attrErrorID.String(herr.id()), semconv.ErrorTypeKey.String(strconv.Itoa(status)))
		if status >= http.StatusInternalServerError {
			span.SetStatus(codes.Error, herr.Message)
		}
	} else if rc != nil && rc.cause != "" {
		attrs = append(attrs, attrCause.String(rc.cause))
	}
	span.SetAttributes(attrs...)
	span.End()
}

// verify runs the route's verifiers, inside a span when tracing is on.
func (s *Server) verifyTraced(c echo.Context, r *route, creds []Credential) ([]Credential, error) {
	if s.trace == nil {
		return s.verify(c, r, false, creds)
	}
	_, span := s.trace.t.Start(c.Request().Context(), "verify", trace.WithAttributes(attrVerifier.String(r.verifier)))
	creds, err := s.verify(c, r, false, creds)
	if err != nil {
		herr := asError(err)
		span.SetAttributes(attrCause.String(herr.Cause), semconv.ErrorTypeKey.String(herr.Cause))
		span.SetStatus(codes.Error, herr.Message)
	}
	span.End()
	return creds, err
}

// startSend starts the span of a request's send to the queue (kind
// producer): mapping its events to messages and waiting for the group
// commit that stores them. Its context is what the request's events and
// messages carry: each event gets the CloudEvents distributed tracing
// extension (traceparent, and tracestate when there is one), set here
// before the events are encoded; the caller applies the returned context
// to the messages. An event that arrived with a traceparent extension of
// its own is linked to, and its extension replaced.
func (t *tracer) startSend(ctx context.Context, p *schemas.Parsed) (context.Context, trace.Span, relay.TraceContext) {
	var links []trace.Link
	for i := range p.Events {
		if sc := eventSpanContext(&p.Events[i]); sc.IsValid() {
			links = append(links, trace.Link{SpanContext: sc})
		}
	}
	attrs := make([]attribute.KeyValue, 0, len(t.sendAttrs)+3)
	attrs = append(attrs, t.sendAttrs...)
	if n := len(p.Events) + len(p.Malformed); n > 1 {
		attrs = append(attrs, semconv.MessagingBatchMessageCount(n))
	}
	if len(p.Events) == 1 && len(p.Malformed) == 0 {
		e := &p.Events[0]
		attrs = append(attrs, semconv.CloudEventsEventID(e.ID), semconv.CloudEventsEventType(e.Type))
		if e.PartitionKey != "" {
			attrs = append(attrs, attrPartitionKey.String(e.PartitionKey))
		}
	}
	ctx, span := t.t.Start(ctx, t.sendName, trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(attrs...), trace.WithLinks(links...))
	tc := relay.TraceContextOf(span.SpanContext())
	if tc.Parent == "" {
		return ctx, span, tc
	}
	parent := json.RawMessage(`"` + tc.Parent + `"`) // hex digits and dashes
	var state json.RawMessage
	if tc.State != "" {
		state, _ = json.Marshal(tc.State) // a string always encodes
	}
	for i := range p.Events {
		e := &p.Events[i]
		if e.Extensions == nil {
			e.Extensions = make(map[string]json.RawMessage, 2)
		}
		e.Extensions[extTraceParent] = parent
		delete(e.Extensions, extTraceState)
		if state != nil {
			e.Extensions[extTraceState] = state
		}
	}
	return ctx, span, tc
}

// eventSpanContext is the context an event's own traceparent extension
// names, if it names a valid one.
func eventSpanContext(e *schemas.Event) trace.SpanContext {
	raw, ok := e.Extensions[extTraceParent]
	if !ok {
		return trace.SpanContext{}
	}
	var tp, ts string
	if json.Unmarshal(raw, &tp) != nil {
		return trace.SpanContext{}
	}
	if raw, ok := e.Extensions[extTraceState]; ok {
		json.Unmarshal(raw, &ts)
	}
	h := http.Header{}
	h.Set(extTraceParent, tp)
	if ts != "" {
		h.Set(extTraceState, ts)
	}
	return trace.SpanContextFromContext(propagation.TraceContext{}.Extract(context.Background(), propagation.HeaderCarrier(h)))
}

// endSend ends a send span with the outcome of the publish of msgs.
func endSend(span trace.Span, msgs []relay.Message, events, dead int, err error) {
	attrs := make([]attribute.KeyValue, 1, 4)
	attrs[0] = attrEvents.Int(events)
	if len(msgs) == 1 {
		attrs = append(attrs, semconv.MessagingMessageID(msgs[0].ID))
	}
	if dead > 0 {
		attrs = append(attrs, attrDeadLettered.Int(dead))
	}
	if err != nil {
		herr := asError(err)
		attrs = append(attrs, semconv.ErrorTypeKey.String(herr.Cause))
		span.SetStatus(codes.Error, herr.Message)
	}
	span.SetAttributes(attrs...)
	span.End()
}
