package servicebus

import (
	"fmt"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"
	"github.com/google/uuid"

	"github.com/hookbridge/hookbridge/relay"
)

// toMessage maps a relay message to a Service Bus message: MessageID,
// Subject, ContentType, body and application properties as they are, and on
// a session-enabled queue SessionID = the partition key, or the message's
// own ID when it has none (so a keyless event is a session of its own).
func toMessage(m *relay.Message, sessions bool) *azservicebus.Message {
	out := &azservicebus.Message{
		MessageID:             &m.ID,
		Body:                  m.Body,
		ApplicationProperties: m.Properties,
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

// fromMessage maps a received Service Bus message back. A session ID equal
// to the message ID is a keyless message's own session, not a partition
// key.
func fromMessage(sm *azservicebus.ReceivedMessage) relay.Message {
	m := relay.Message{ID: sm.MessageID, Body: sm.Body, Properties: sm.ApplicationProperties}
	if sm.SessionID != nil && *sm.SessionID != sm.MessageID {
		m.SessionID = *sm.SessionID
	}
	if sm.Subject != nil {
		m.Subject = *sm.Subject
	}
	if sm.ContentType != nil {
		m.ContentType = *sm.ContentType
	}
	if len(m.Properties) == 0 {
		m.Properties = nil
	}
	return m
}

// received builds the relay view of a locked message.
func received(sm *azservicebus.ReceivedMessage, h *handle) *relay.Received {
	r := &relay.Received{Message: fromMessage(sm), DeliveryCount: int(sm.DeliveryCount), LockToken: uuid.UUID(sm.LockToken).String(), Backend: h}
	if sm.SequenceNumber != nil {
		r.SequenceNumber = *sm.SequenceNumber
	}
	if sm.EnqueuedTime != nil {
		r.EnqueuedTime = *sm.EnqueuedTime
	}
	if sm.LockedUntil != nil {
		r.LockedUntil = *sm.LockedUntil
	}
	return r
}

// deadLetter builds the relay view of a dead-lettered message.
func deadLetter(sm *azservicebus.ReceivedMessage) relay.DeadLetter {
	d := relay.DeadLetter{Message: fromMessage(sm), DeliveryCount: int(sm.DeliveryCount)}
	if sm.SequenceNumber != nil {
		d.SequenceNumber = *sm.SequenceNumber
	}
	if sm.EnqueuedTime != nil {
		d.EnqueuedTime = *sm.EnqueuedTime
	}
	if sm.DeadLetterReason != nil {
		d.Reason = *sm.DeadLetterReason
	}
	if sm.DeadLetterErrorDescription != nil {
		d.Description = *sm.DeadLetterErrorDescription
	}
	// Service Bus does not record when a message was dead-lettered.
	d.DeadLetteredTime = time.Time{}
	delete(d.Properties, "DeadLetterReason")
	delete(d.Properties, "DeadLetterErrorDescription")
	return d
}

// maxDescription bounds a dead-letter description.
const maxDescription = 4000

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

func describeSeq(seq int64) string { return fmt.Sprintf("sequence number %d", seq) }
