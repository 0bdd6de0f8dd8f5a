package servicebus

import (
	"maps"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"
	"github.com/google/uuid"

	"github.com/hookbridge/hookbridge/relay"
)

// Application properties that carry a relay.Message's DeadLetterReason and
// DeadLetterDescription: Service Bus takes no sends to a dead-letter queue,
// so such a message is sent to the queue marked with them, and this
// backend's receivers dead-letter it on arrival, never handing it out.
const (
	PropDeadLetterReason      = "hookbridge_deadletter_reason"
	PropDeadLetterDescription = "hookbridge_deadletter_description"
)

// Application properties Service Bus sets on a dead-lettered message; the
// relay view carries them as DeadLetter.Reason and Description instead.
const (
	sbDeadLetterReason      = "DeadLetterReason"
	sbDeadLetterDescription = "DeadLetterErrorDescription"
)

// maxDescription bounds a dead-letter description.
const maxDescription = 4000

// toMessage maps a relay message to a Service Bus message: MessageID,
// Subject, ContentType, body and application properties as they are (the
// trace context among them: traceparent, tracestate and Diagnostic-Id,
// which Microsoft's SDKs in other languages read to join the trace), and on
// a session-enabled queue SessionID = the partition key, or the message's
// own ID when it has none (so a keyless event is a session of its own). A
// message for the dead-letter queue is marked (PropDeadLetterReason).
func toMessage(m *relay.Message, sessions bool) *azservicebus.Message {
	props := m.Properties
	if m.DeadLetterReason != "" {
		props = maps.Clone(props)
		if props == nil {
			props = map[string]any{}
		}
		props[PropDeadLetterReason] = m.DeadLetterReason
		props[PropDeadLetterDescription] = relay.Truncate(m.DeadLetterDescription, maxDescription)
	}
	out := &azservicebus.Message{
		MessageID:             &m.ID,
		Body:                  m.Body,
		ApplicationProperties: props,
	}
	if m.Subject != "" {
		out.Subject = &m.Subject
	}
	if m.ContentType != "" {
		out.ContentType = &m.ContentType
	}
	if sessions {
		sid := m.SessionID
		if sid == "" {
			sid = m.ID
		}
		out.SessionID = &sid
	}
	return out
}

// deadLetterMark returns the reason and description a marked message asks
// to be dead-lettered with, or ok false.
func deadLetterMark(sm *azservicebus.ReceivedMessage) (reason, description string, ok bool) {
	reason, _ = sm.ApplicationProperties[PropDeadLetterReason].(string)
	description, _ = sm.ApplicationProperties[PropDeadLetterDescription].(string)
	return reason, description, reason != ""
}

// fromMessage maps a received Service Bus message back. A session ID equal
// to the message ID is a keyless message's own session, not a partition
// key. Service Bus's and hookbridge's dead-letter properties are left out:
// the relay types carry them as fields.
func fromMessage(sm *azservicebus.ReceivedMessage) relay.Message {
	m := relay.Message{ID: sm.MessageID, Body: sm.Body, Properties: sm.ApplicationProperties,
		Subject: valueOr(sm.Subject, ""), ContentType: valueOr(sm.ContentType, "")}
	if sm.SessionID != nil && *sm.SessionID != sm.MessageID {
		m.SessionID = *sm.SessionID
	}
	for _, k := range []string{sbDeadLetterReason, sbDeadLetterDescription, PropDeadLetterReason, PropDeadLetterDescription} {
		if _, ok := m.Properties[k]; ok {
			m.Properties = maps.Clone(m.Properties)
			delete(m.Properties, k)
		}
	}
	if len(m.Properties) == 0 {
		m.Properties = nil
	}
	return m
}

// received builds the relay view of a locked message.
func received(sm *azservicebus.ReceivedMessage, h *handle, maxDelivery int) *relay.Received {
	return &relay.Received{Message: fromMessage(sm), DeliveryCount: int(sm.DeliveryCount), MaxDeliveryCount: maxDelivery,
		LockToken: uuid.UUID(sm.LockToken).String(), Backend: h, SequenceNumber: valueOr(sm.SequenceNumber, 0),
		EnqueuedTime: valueOr(sm.EnqueuedTime, time.Time{}), LockedUntil: valueOr(sm.LockedUntil, time.Time{})}
}

// deadLetter builds the relay view of a dead-lettered message.
func deadLetter(sm *azservicebus.ReceivedMessage) relay.DeadLetter {
	// Service Bus does not record when a message was dead-lettered: no
	// DeadLetteredTime.
	return relay.DeadLetter{Message: fromMessage(sm), DeliveryCount: int(sm.DeliveryCount),
		SequenceNumber: valueOr(sm.SequenceNumber, 0), EnqueuedTime: valueOr(sm.EnqueuedTime, time.Time{}),
		Reason: valueOr(sm.DeadLetterReason, ""), Description: valueOr(sm.DeadLetterErrorDescription, "")}
}

// valueOr is *p, or def when p is nil: the SDK leaves the properties a
// message does not carry nil.
func valueOr[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

// eventID is the CloudEvent id a message carries, for logs.
func eventID(sm *azservicebus.ReceivedMessage) string {
	id, _ := sm.ApplicationProperties[relay.PropID].(string)
	return id
}
