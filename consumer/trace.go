package consumer

import (
	"context"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/hookbridge/hookbridge/relay"
	"github.com/hookbridge/hookbridge/schemas"
)

// Span attributes of hookbridge's own (the others follow OpenTelemetry's
// messaging and HTTP semantic conventions).
const (
	attrPartitionKey     = attribute.Key("hookbridge.partition_key")
	attrDeliveryCount    = attribute.Key("hookbridge.delivery_count")
	attrOutcome          = attribute.Key("hookbridge.outcome")
	attrDeadLetterReason = attribute.Key("hookbridge.dead_letter_reason")
	attrRetryIn          = attribute.Key("hookbridge.retry_in_ms")
)

const instrumentation = "github.com/hookbridge/hookbridge/consumer"

// tracer traces deliveries; a nil *tracer is tracing off.
type tracer struct {
	t           trace.Tracer
	processName string
	settleName  string
	attrs       []attribute.KeyValue
}

func newTracer(tp trace.TracerProvider, queue string, attrs []attribute.KeyValue) *tracer {
	if tp == nil {
		return nil
	}
	if queue == "" {
		queue = "queue"
	}
	return &tracer{
		t:           tp.Tracer(instrumentation),
		processName: "process " + queue,
		settleName:  "settle " + queue,
		attrs:       append([]attribute.KeyValue{}, attrs...),
	}
}

// startProcess starts the consumer span of one delivery, a child of the
// span that sent the message (the context is in the message, so it holds
// across worker restarts and other processes), or a new trace when the
// message carries none.
func (t *tracer) startProcess(ctx context.Context, m *relay.Received) trace.Span {
	opts := []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindConsumer), trace.WithAttributes(t.attrs...),
		trace.WithAttributes(
			semconv.MessagingOperationTypeProcess,
			semconv.MessagingOperationName("process"),
			semconv.MessagingMessageID(m.ID),
			attrDeliveryCount.Int(m.DeliveryCount),
		)}
	if sc := relay.RemoteSpanContext(m.Properties); sc.IsValid() {
		ctx = trace.ContextWithRemoteSpanContext(ctx, sc)
	} else {
		opts = append(opts, trace.WithNewRoot()) // never a child of whatever ctx holds
	}
	_, span := t.t.Start(ctx, t.processName, opts...)
	if m.SessionID != "" {
		span.SetAttributes(attrPartitionKey.String(m.SessionID))
	}
	return span
}

// setEvent records which event a delivery carries.
func setEvent(span trace.Span, e *schemas.Event) {
	span.SetAttributes(semconv.CloudEventsEventID(e.ID), semconv.CloudEventsEventType(e.Type))
}

// recordLockLost records a delivery whose lock was lost: the queue delivers the
// event again.
func recordLockLost(span trace.Span, err error) {
	span.SetAttributes(attrOutcome.String(outcomeLockLost))
	span.SetStatus(codes.Error, "lock lost during delivery; the queue will deliver the event again")
	if err != nil {
		span.SetAttributes(semconv.ErrorTypeKey.String(errorType(err)))
	}
}

// settleOperations names the settlement of each outcome, as Service Bus
// does (messaging.operation.name).
var settleOperations = map[string]string{
	outcomeCompleted:    "complete",
	outcomeDeadLettered: "dead_letter",
	outcomeRetried:      "abandon",
	outcomeAbandoned:    "abandon",
}

// startSettle starts the span of a settlement (kind client).
func (t *tracer) startSettle(ctx context.Context, outcome string) (context.Context, trace.Span) {
	return t.t.Start(ctx, t.settleName, trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(t.attrs...),
		trace.WithAttributes(semconv.MessagingOperationTypeSettle, semconv.MessagingOperationName(settleOperations[outcome])))
}

// endSettle ends a settlement's span and records the delivery's outcome
// on its process span: an error status when the delivery failed or could
// not be settled, with the settlement and why, never the event.
func endSettle(settle, process trace.Span, outcome, reason string, delay time.Duration, d delivery, serr error) {
	if serr != nil {
		settle.SetStatus(codes.Error, serr.Error())
		settle.SetAttributes(semconv.ErrorTypeKey.String(relay.ErrorType(serr)))
	}
	settle.End()
	process.SetAttributes(attrOutcome.String(outcome))
	if reason != "" {
		process.SetAttributes(attrDeadLetterReason.String(reason))
	}
	if outcome == outcomeRetried {
		process.SetAttributes(attrRetryIn.Int64(delay.Milliseconds()))
	}
	switch {
	case serr != nil:
		process.SetStatus(codes.Error, "settlement failed; the queue will deliver the event again when its lock expires")
	case d.err != nil:
		desc := outcome + ": " + cause(d)
		if reason != "" {
			desc = outcome + ": " + reason
		}
		process.SetStatus(codes.Error, desc)
		process.SetAttributes(semconv.ErrorTypeKey.String(errorType(d.err)))
	}
}

// errorType classifies a delivery error for spans' error.type.
func errorType(err error) string {
	if p, ok := IsPermanent(err); ok {
		return p.Reason
	}
	return "delivery_failed"
}
