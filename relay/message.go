package relay

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/hookbridge/hookbridge/schemas"
)

// Message is one queue message, the same on every backend.
type Message struct {
	// ID is the MessageID: the CloudEvent's identity (see MessageID), or a
	// fresh one for a replayed copy. Backends drop a second message with the same ID within their
	// duplicate-detection window.
	ID string
	// SessionID is the event's partition key, "" when it has none. Backends
	// deliver the messages of one session one at a time, in order.
	SessionID string
	// Subject is the CloudEvent type.
	Subject string
	// ContentType is the body's media type (schemas.ContentType).
	ContentType string
	// Body is the structured-mode CloudEvent.
	Body []byte
	// Properties are the application properties; values are string, bool,
	// int64 or float64.
	Properties map[string]any
	// DeadLetterReason, when set, sends the message straight to the
	// dead-letter queue with this reason and DeadLetterDescription, never to
	// a consumer: the ingress keeps a verified sender's event that cannot be
	// normalized this way (ReasonMalformedEvent). A backend that cannot write
	// to its dead-letter queue directly (Service Bus) enqueues it marked, and
	// its receivers dead-letter it on arrival.
	DeadLetterReason      string
	DeadLetterDescription string
}

// Size approximates the encoded size of m, for batching limits: body,
// identifiers and properties.
func (m *Message) Size() int {
	n := len(m.Body) + len(m.ID) + len(m.SessionID) + len(m.Subject) + len(m.ContentType) +
		len(m.DeadLetterReason) + len(m.DeadLetterDescription)
	for k, v := range m.Properties {
		n += len(k) + 8
		if s, ok := v.(string); ok {
			n += len(s)
		}
	}
	return n
}

// Application properties set on every message: the CloudEvents AMQP
// binding's attributes, so consumers can route without reading the body.
const (
	PropType    = "cloudEvents_type"
	PropSource  = "cloudEvents_source"
	PropID      = "cloudEvents_id"
	PropSubject = "cloudEvents_subject"
	PropTime    = "cloudEvents_time"

	// PropReplayCount is set on a copy re-sent from the dead-letter queue:
	// how many times the event has been replayed (int64).
	PropReplayCount = "hookbridge_replay_count"
	// PropReplayOf is the MessageID of the dead-lettered message a replayed
	// copy was made from.
	PropReplayOf = "hookbridge_replay_of"

	// PropTraceParent and PropTraceState carry the W3C trace context of the
	// span that sent the message (with tracing on; see SetTraceContext).
	PropTraceParent = "traceparent"
	PropTraceState  = "tracestate"
	// PropDiagnosticID is the trace context property Azure's Service Bus
	// SDKs in other languages read: the same value as PropTraceParent.
	PropDiagnosticID = "Diagnostic-Id"
)

// MaxIDLength is the longest MessageID and SessionID Service Bus accepts.
// Longer identifiers are replaced by a digest, on every backend alike, so
// duplicate detection and sessions behave the same.
const MaxIDLength = 128

// boundedID returns id, or a stable digest of it when it is longer than
// MaxIDLength.
func boundedID(id string) string {
	if len(id) <= MaxIDLength {
		return id
	}
	sum := sha256.Sum256([]byte(id))
	return "sha256-" + hex.EncodeToString(sum[:])
}

// MessageID returns the MessageID of an event: its CloudEvents identity,
// source and id, which a sender keeps across redeliveries of one event and
// never gives two different events.
//
// It is the id itself where the id alone stays unique: a UUID (8-4-4-4-12
// hex digits, the form of every id Call Automation and Event Grid assign) of
// at most MaxIDLength characters, random and so unique whatever its source.
// Any other id is combined with its source: "sha256-" and the hex SHA-256
// digest of the source's length, the source and the id (71 characters), so
// two sources' events "1" are two messages, and a redelivery of either is
// still dropped as a duplicate.
func MessageID(source, id string) string {
	if isUUID(id) {
		return id
	}
	// Hashed from one buffer, on the stack for the usual lengths: the
	// request path makes one allocation here, the string.
	var buf [256]byte
	b := binary.AppendUvarint(buf[:0], uint64(len(source)))
	b = append(append(b, source...), id...)
	sum := sha256.Sum256(b)
	var out [len(messageIDPrefix) + 2*sha256.Size]byte
	copy(out[:], messageIDPrefix)
	hex.Encode(out[len(messageIDPrefix):], sum[:])
	return string(out[:])
}

const messageIDPrefix = "sha256-"

// isUUID reports whether s has the form of a UUID: 8-4-4-4-12 hex digits.
func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
				return false
			}
		}
	}
	return true
}

// NewMessage maps a normalized event to its queue message: MessageID = the
// event's identity (see MessageID), SessionID = partition key, Subject =
// type, the body the structured CloudEvent, and the cloudEvents_*
// application properties.
func NewMessage(e *schemas.Event) (Message, error) {
	body, err := e.MarshalJSON()
	if err != nil {
		return Message{}, fmt.Errorf("map event to message: %w", err)
	}
	props := make(map[string]any, 5)
	props[PropType], props[PropSource], props[PropID] = e.Type, e.Source, e.ID
	if e.Subject != "" {
		props[PropSubject] = e.Subject
	}
	if e.Time != "" {
		props[PropTime] = e.Time
	}
	return Message{
		ID:          MessageID(e.Source, e.ID),
		SessionID:   boundedID(e.PartitionKey),
		Subject:     e.Type,
		ContentType: schemas.ContentType,
		Body:        body,
		Properties:  props,
	}, nil
}

// MalformedContentType is the content type of a malformed event's message:
// its body is the element exactly as the sender posted it.
const MalformedContentType = "application/json"

// NewMalformedMessage maps an element of a verified sender's body that is
// not a valid event to a message bound straight for the dead-letter queue
// (DeadLetterReason ReasonMalformedEvent, the rule it broke as description).
// Its body is the element as received (copied), its MessageID "malformed-"
// and the hex SHA-256 of those bytes, so a sender's redelivery is a
// duplicate; its session is the partition key where one could be derived,
// and cloudEvents_id, _source and _type are set where they could be read, so
// the dead-letter tooling finds it by event id.
func NewMalformedMessage(m *schemas.Malformed) Message {
	sum := sha256.Sum256(m.Raw)
	props := make(map[string]any, 3)
	if m.ID != "" {
		props[PropID] = m.ID
	}
	if m.Source != "" {
		props[PropSource] = m.Source
	}
	if m.Type != "" {
		props[PropType] = m.Type
	}
	desc := "the event breaks an envelope rule"
	if m.Err != nil {
		desc = m.Err.Error()
	}
	return Message{
		ID:                    "malformed-" + hex.EncodeToString(sum[:]),
		SessionID:             boundedID(m.PartitionKey),
		Subject:               m.Type,
		ContentType:           MalformedContentType,
		Body:                  bytes.Clone(m.Raw),
		Properties:            props,
		DeadLetterReason:      ReasonMalformedEvent,
		DeadLetterDescription: desc,
	}
}

// Event decodes the message body back into the normalized event.
func (m *Message) Event() (*schemas.Event, error) {
	e, err := schemas.ParseNormalized(m.Body)
	if err != nil {
		return nil, fmt.Errorf("decode message %q: %w", m.ID, err)
	}
	return e, nil
}

// Received is a message handed out by a receiver under a lock: it stays
// invisible to other receivers until it is settled or its lock expires.
type Received struct {
	Message
	// SequenceNumber is the queue's number for the message, unique and
	// increasing in enqueue order.
	SequenceNumber int64
	// DeliveryCount is how many times the message has been handed out,
	// this time included (1 on first delivery).
	DeliveryCount int
	// MaxDeliveryCount is the queue's maximum delivery count, 0 when the
	// backend does not know it: a delivery with DeliveryCount ≥
	// MaxDeliveryCount is the last one before the queue dead-letters the
	// message, so a consumer dead-letters it itself, saying why.
	MaxDeliveryCount int
	EnqueuedTime     time.Time
	// LockedUntil is when the lock expires unless renewed.
	LockedUntil time.Time
	// LockToken identifies this delivery's lock.
	LockToken string
	// Backend is the backend's own handle of the delivery.
	Backend any
}

// DeadLetter is a message in the dead-letter queue.
type DeadLetter struct {
	Message
	SequenceNumber   int64
	DeliveryCount    int
	EnqueuedTime     time.Time
	DeadLetteredTime time.Time
	// Reason and Description say why the message was dead-lettered, for
	// example "MaxDeliveryCountExceeded" or "BackendRejected".
	Reason      string
	Description string
}

// DeadLetterLock is a dead-lettered message taken (locked) by the
// dead-letter tooling, to be completed (removed) or released.
type DeadLetterLock struct {
	DeadLetter
	LockToken string
	// Backend is the backend's own handle.
	Backend any
}

// Dead-letter reasons set by hookbridge itself.
const (
	// ReasonMaxDelivery is the queue's reason once a message was delivered
	// the queue's maximum number of times (the name Service Bus uses).
	ReasonMaxDelivery = "MaxDeliveryCountExceeded"
	// ReasonMalformedEvent is set by the ingress on an event from a
	// verified sender that breaks an envelope rule no documented lenient
	// rule repairs; the description names the rule.
	ReasonMalformedEvent = "MalformedEvent"
)
