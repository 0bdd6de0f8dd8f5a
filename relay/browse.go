package relay

import "time"

// Browsing: read-only views of a queue for operators (the console). Every
// backend answers with these types; what a backend cannot see is said in
// the results' Notes, never guessed.

// MessageState is where a message is, as far as its backend can tell.
type MessageState string

// Message states. The embedded queue knows every one of the first four
// exactly; Service Bus's peek cannot tell a locked message from a waiting
// one, so its messages are Active, Deferred or Scheduled.
const (
	// StateWaiting: in the queue, not locked; it is handed out when it
	// reaches the head of its call's events.
	StateWaiting MessageState = "waiting"
	// StateLocked: handed out to a worker and not settled: in delivery.
	StateLocked MessageState = "locked"
	// StateDelayed: abandoned after a failed delivery, waiting out its
	// retry delay (VisibleAt).
	StateDelayed MessageState = "delayed"
	// StateDeadLettered: in the dead-letter queue.
	StateDeadLettered MessageState = "dead-lettered"
	// StateActive: in the queue, waiting or locked (Service Bus).
	StateActive MessageState = "active"
	// StateDeferred: set aside by a receiver, received only by sequence
	// number (Service Bus).
	StateDeferred MessageState = "deferred"
	// StateScheduled: enqueued for a later time, VisibleAt (Service Bus).
	StateScheduled MessageState = "scheduled"
)

// BrowsedMessage is one message as a browse sees it, in the queue or in the
// dead-letter queue.
type BrowsedMessage struct {
	Message
	SequenceNumber int64
	State          MessageState
	// DeliveryCount is how many times the message was handed out.
	DeliveryCount int
	EnqueuedTime  time.Time
	// LockedUntil is when a locked message's lock expires (zero when not
	// locked, or not known).
	LockedUntil time.Time
	// VisibleAt is when a delayed or scheduled message becomes deliverable.
	VisibleAt time.Time
	// Dead-lettered messages only.
	Reason, Description string
	DeadLetteredTime    time.Time
}

// EventID is the CloudEvent id the message carries, "" when it has none.
func (m BrowsedMessage) EventID() string {
	id, _ := m.Properties[PropID].(string)
	return id
}

// Type is the CloudEvent type: the Subject, or the cloudEvents_type
// property.
func (m BrowsedMessage) Type() string {
	if m.Subject != "" {
		return m.Subject
	}
	t, _ := m.Properties[PropType].(string)
	return t
}

// FromDeadLetter is the browse view of a dead-lettered message.
func FromDeadLetter(d DeadLetter) BrowsedMessage {
	return BrowsedMessage{
		Message: d.Message, SequenceNumber: d.SequenceNumber, State: StateDeadLettered,
		DeliveryCount: d.DeliveryCount, EnqueuedTime: d.EnqueuedTime,
		Reason: d.Reason, Description: d.Description, DeadLetteredTime: d.DeadLetteredTime,
	}
}

// SummaryOptions bound what a summary reads.
type SummaryOptions struct {
	// Scan is how many of the oldest messages are looked at for the
	// per-state counts and the sessions. Default 10000.
	Scan int
	// Sessions is how many sessions are listed, oldest first. Default 50.
	Sessions int
}

// Summary defaults.
const (
	DefaultSummaryScan     = 10000
	DefaultSummarySessions = 50
)

// QueueSummary is a queue's state at a glance.
type QueueSummary struct {
	// Active is how many messages are in the queue (not dead-lettered);
	// -1 when the backend cannot count them.
	Active int64
	// DeadLettered is how many messages are in the dead-letter queue; -1
	// when the backend cannot count them.
	DeadLettered int64
	// Locked, Delayed and Waiting split the Scanned oldest messages by
	// state. KnowsLocks says the backend can tell a locked message from a
	// waiting one (the embedded queue); without it, Waiting counts the
	// active messages and Delayed the scheduled and deferred ones.
	Locked, Delayed, Waiting int64
	KnowsLocks               bool
	// Scanned is how many of the oldest messages the per-state counts,
	// Oldest and Sessions cover; Truncated says there are more.
	Scanned   int64
	Truncated bool
	// Oldest is the oldest message in the queue, nil when it is empty or
	// the backend cannot see it.
	Oldest *BrowsedMessage
	// Sessions are the calls (partition keys) with messages waiting,
	// oldest first, at most the limit asked for.
	Sessions []SessionBacklog
	// MoreSessions says there are more sessions than listed.
	MoreSessions bool
	// Notes say what the backend could not see, and why.
	Notes []string
}

// SessionBacklog is one call's messages in the queue.
type SessionBacklog struct {
	// SessionID is the partition key (the call's correlation id).
	SessionID string
	// Messages is how many of its messages are in the queue (among the
	// scanned ones); -1 when unknown.
	Messages int64
	// Head is its oldest message, the one delivered next (nil when the
	// backend cannot see it).
	Head *BrowsedMessage
}

// FindQuery selects messages to find. Zero fields match nothing; a query
// with several fields set finds the messages that match any of them.
type FindQuery struct {
	// ID matches a MessageID or a CloudEvent id.
	ID string
	// PartitionKey matches the SessionID: a call's correlation id.
	PartitionKey string
	// Limit caps how many messages are returned (in the queue and in the
	// dead-letter queue, each). Default 200.
	Limit int
}

// DefaultFindLimit is FindQuery.Limit's default.
const DefaultFindLimit = 200

// FindResult is what a find saw, in enqueue order: the queue's messages
// and the dead-lettered ones merged.
type FindResult struct {
	Messages []BrowsedMessage
	// Truncated says the limit cut the result short.
	Truncated bool
	// Notes say what the backend could not search, and why.
	Notes []string
}

// MessageRef names one message to look at.
type MessageRef struct {
	// DeadLettered says the message is in the dead-letter queue.
	DeadLettered   bool
	SequenceNumber int64
	// SessionID is the message's session, needed to peek an active message
	// of a session-enabled Service Bus queue.
	SessionID string
}
