// Package relay is the queue layer between the ingress and the workers: the
// message model every backend shares, the mapping from normalized events to
// messages, and group commit.
//
// A Message carries one normalized CloudEvent: MessageID = the event's
// identity, source and id (see MessageID; duplicate detection drops a
// sender's redeliveries and never another event sharing an id), SessionID =
// partition key (so a call's events are handed out one at a time, in order),
// Subject = type, and the CloudEvents AMQP binding's cloudEvents_*
// application properties. NewMessage builds one from a schemas.Event;
// NewMalformedMessage one bound for the dead-letter queue from an element a
// verified sender posted that is not a valid event.
//
// Batcher is group commit: concurrent Publish calls are coalesced into one
// BatchSender.SendBatch call (bounded by count, bytes and an optional linger),
// and each caller waits for the result of the commit holding its messages. A
// nil error means the queue has the messages; nothing is acknowledged
// earlier. Its Run does the committing, until its context ends.
//
// Trace context: with tracing on, a message carries the W3C trace context
// of the span that sent it as the application properties traceparent,
// tracestate and Diagnostic-Id (TraceContext.Apply; RemoteSpanContext reads
// it back, or a Diagnostic-Id alone), which both backends store as given.
// TraceCommits wraps a BatchSender so that each group commit is a span
// linked to the requests it carried.
//
// Backends live in subpackages: relay/sqlite (embedded, the default) and
// relay/servicebus (Azure Service Bus). Each passes relay/relaytest, the
// conformance suite of the queue contract. Their errors wrap the sentinels
// in errors.go: ErrUnavailable for anything a retry may fix, ErrMessageTooLarge
// for what no retry can, ErrLockLost for settlements that came too late.
package relay
