package sbemu

import (
	"sync"
	"time"
)

// EventKind names what an Event records.
type EventKind string

// Event kinds.
const (
	EventConnOpened         EventKind = "conn-opened"
	EventConnClosed         EventKind = "conn-closed"
	EventLinkAttached       EventKind = "link-attached"
	EventLinkDetached       EventKind = "link-detached"
	EventEnqueued           EventKind = "enqueued"
	EventDuplicate          EventKind = "duplicate-dropped"
	EventDelivered          EventKind = "delivered"
	EventSettled            EventKind = "settled"
	EventDeadLettered       EventKind = "dead-lettered"
	EventLockExpired        EventKind = "lock-expired"
	EventSessionLockExpired EventKind = "session-lock-expired"
	EventCBS                EventKind = "cbs-put-token"
	EventManagement         EventKind = "management"
	EventFault              EventKind = "fault"
)

// Event is one entry of the server's event log.
type Event struct {
	Time      time.Time
	Kind      EventKind
	Conn      int
	Link      string
	Entity    string
	MessageID string
	Sequence  int64
	Detail    string
}

// eventLog is a bounded log of events.
type eventLog struct {
	mu     sync.Mutex
	events []Event
}

const maxEvents = 100_000

func (l *eventLog) add(e Event) {
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.events) >= maxEvents {
		l.events = append(l.events[:0], l.events[maxEvents/2:]...)
	}
	l.events = append(l.events, e)
}

func (l *eventLog) snapshot() []Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Event(nil), l.events...)
}
