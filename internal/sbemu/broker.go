package sbemu

import (
	"crypto/rand"
	"fmt"
	"strings"
	"time"

	"github.com/Azure/go-amqp"
)

// QueueConfig describes one queue, with Service Bus's property names and
// defaults.
type QueueConfig struct {
	Name string
	// LockDuration: default 60s.
	LockDuration time.Duration
	// MaxDeliveryCount: default 10.
	MaxDeliveryCount int
	// RequiresSession: the queue delivers only through session receivers,
	// and refuses messages without a session ID.
	RequiresSession bool
	// RequiresDuplicateDetection and DuplicateDetectionHistoryTimeWindow
	// (default 10m): a message whose ID was sent within the window is
	// accepted and dropped.
	RequiresDuplicateDetection          bool
	DuplicateDetectionHistoryTimeWindow time.Duration
	// DefaultMessageTimeToLive: zero means messages do not expire.
	DefaultMessageTimeToLive time.Duration
	// DeadLetteringOnMessageExpiration moves expired messages to the
	// dead-letter queue (reason TTLExpiredException) instead of dropping
	// them.
	DeadLetteringOnMessageExpiration bool
	// MaxMessageSizeBytes: default 256 KiB, as on the Standard tier.
	MaxMessageSizeBytes int
}

func (c *QueueConfig) setDefaults() {
	if c.LockDuration == 0 {
		c.LockDuration = time.Minute
	}
	if c.MaxDeliveryCount == 0 {
		c.MaxDeliveryCount = 10
	}
	if c.DuplicateDetectionHistoryTimeWindow == 0 {
		c.DuplicateDetectionHistoryTimeWindow = 10 * time.Minute
	}
	if c.MaxMessageSizeBytes == 0 {
		c.MaxMessageSizeBytes = 256 << 10
	}
}

const deadLetterSuffix = "/$deadletterqueue"

// queue is a queue or a dead-letter sub-queue.
type queue struct {
	cfg      QueueConfig
	name     string // as configured
	dlq      *queue // nil for a dead-letter queue
	parent   *queue // the main queue of a dead-letter queue
	nextSeq  int64
	messages []*stored // by sequence number
	dedup    map[string]time.Time
	sessions map[string]*sessionState
}

func newQueue(cfg QueueConfig) *queue {
	cfg.setDefaults()
	q := &queue{cfg: cfg, name: cfg.Name, nextSeq: 1, dedup: map[string]time.Time{}, sessions: map[string]*sessionState{}}
	q.dlq = &queue{cfg: QueueConfig{Name: cfg.Name + "/$DeadLetterQueue", LockDuration: cfg.LockDuration, MaxDeliveryCount: 1 << 30,
		MaxMessageSizeBytes: cfg.MaxMessageSizeBytes}, name: cfg.Name + "/$DeadLetterQueue", parent: q, nextSeq: 1,
		dedup: map[string]time.Time{}, sessions: map[string]*sessionState{}}
	return q
}

// isDLQ reports whether q is a dead-letter queue.
func (q *queue) isDLQ() bool { return q.parent != nil }

// stored is a message in a queue.
type stored struct {
	seq         int64
	msg         *amqp.Message // as sent, without broker annotations
	enqueued    time.Time
	expires     time.Time // zero: never
	visible     time.Time // scheduled enqueue time
	prior       uint32    // deliveries that ended without settlement
	sessionID   string
	deferred    bool
	lockToken   UUID // zero: not locked
	lockedUntil time.Time
	holder      *link // the link that holds the lock
	dlSource    string
}

func (m *stored) locked(now time.Time) bool {
	return m.lockToken != (UUID{}) && now.Before(m.lockedUntil)
}

func (m *stored) unlock() {
	m.lockToken, m.lockedUntil, m.holder = UUID{}, time.Time{}, nil
}

// sessionState is a session of a session-enabled queue.
type sessionState struct {
	id          string
	holder      *link
	lockedUntil time.Time
	state       []byte
}

func (s *sessionState) held(now time.Time) bool { return s.holder != nil && now.Before(s.lockedUntil) }

func newLockToken() UUID {
	var u UUID
	rand.Read(u[:])
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return u
}

// dotnetOrder converts an RFC 4122 UUID to .NET's GUID byte order (the first
// three groups little-endian), the order of a lock token in a delivery tag.
func dotnetOrder(u UUID) []byte {
	b := make([]byte, 16)
	copy(b, u[:])
	b[0], b[1], b[2], b[3] = u[3], u[2], u[1], u[0]
	b[4], b[5] = u[5], u[4]
	b[6], b[7] = u[7], u[6]
	return b
}

// enqueue adds msg to q (the caller holds the server lock). It returns false
// when the message is a duplicate that was dropped.
func (s *Server) enqueue(q *queue, msg *amqp.Message, now time.Time) (bool, error) {
	id := messageID(msg)
	if q.cfg.RequiresDuplicateDetection && id != "" {
		if seen, ok := q.dedup[id]; ok && now.Sub(seen) < q.cfg.DuplicateDetectionHistoryTimeWindow {
			s.events.add(Event{Kind: EventDuplicate, Entity: q.name, MessageID: id})
			return false, nil
		}
		q.dedup[id] = now
	}
	m := &stored{seq: q.nextSeq, msg: msg, enqueued: now, visible: now}
	q.nextSeq++
	if msg.Properties != nil && msg.Properties.GroupID != nil {
		m.sessionID = *msg.Properties.GroupID
	}
	if q.cfg.RequiresSession && m.sessionID == "" && !q.isDLQ() {
		return false, fmt.Errorf("the queue requires sessions: set a session ID on every message")
	}
	if t, ok := msg.Annotations["x-opt-scheduled-enqueue-time"].(time.Time); ok && t.After(now) {
		m.visible = t
	}
	ttl := q.cfg.DefaultMessageTimeToLive
	if msg.Header != nil && msg.Header.TTL > 0 && (ttl == 0 || msg.Header.TTL < ttl) {
		ttl = msg.Header.TTL
	}
	if ttl > 0 {
		m.expires = m.visible.Add(ttl)
	}
	q.messages = append(q.messages, m)
	s.events.add(Event{Kind: EventEnqueued, Entity: q.name, MessageID: id, Sequence: m.seq})
	return true, nil
}

func messageID(msg *amqp.Message) string {
	if msg.Properties == nil || msg.Properties.MessageID == nil {
		return ""
	}
	return fmt.Sprint(msg.Properties.MessageID)
}

// remove takes m out of q.
func (q *queue) remove(m *stored) {
	for i, x := range q.messages {
		if x == m {
			q.messages = append(q.messages[:i], q.messages[i+1:]...)
			return
		}
	}
}

// deadLetter moves m from q to q's dead-letter queue.
func (s *Server) deadLetter(q *queue, m *stored, reason, description string, now time.Time) {
	if q.isDLQ() { // a dead letter cannot be dead-lettered again
		m.unlock()
		return
	}
	q.remove(m)
	m.unlock()
	msg := *m.msg
	props := make(map[string]any, len(msg.ApplicationProperties)+2)
	for k, v := range msg.ApplicationProperties {
		props[k] = v
	}
	props["DeadLetterReason"] = reason
	props["DeadLetterErrorDescription"] = description
	msg.ApplicationProperties = props
	dl := &stored{seq: q.dlq.nextSeq, msg: &msg, enqueued: m.enqueued, visible: now, prior: m.prior,
		sessionID: m.sessionID, dlSource: q.name}
	q.dlq.nextSeq++
	q.dlq.messages = append(q.dlq.messages, dl)
	s.events.add(Event{Kind: EventDeadLettered, Entity: q.name, MessageID: messageID(m.msg), Sequence: m.seq, Detail: reason})
}

// release ends a delivery without settlement: the message is available
// again, and if counted, its delivery count grows and it may be
// dead-lettered at the maximum.
func (s *Server) release(q *queue, m *stored, counted bool, now time.Time) {
	m.unlock()
	if !counted {
		return
	}
	m.prior++
	if !q.isDLQ() && int(m.prior) >= q.cfg.MaxDeliveryCount {
		s.deadLetter(q, m, "MaxDeliveryCountExceeded",
			fmt.Sprintf("Message could not be consumed after %d delivery attempts.", q.cfg.MaxDeliveryCount), now)
	}
}

// available reports whether m may be handed out now.
func (m *stored) available(now time.Time) bool {
	return !m.deferred && !m.locked(now) && !now.Before(m.visible)
}

// expire applies lock expiry, session expiry and time-to-live to q.
func (s *Server) expire(q *queue, now time.Time) (changed bool) {
	for _, ss := range q.sessions {
		if ss.holder != nil && !now.Before(ss.lockedUntil) {
			s.events.add(Event{Kind: EventSessionLockExpired, Entity: q.name, Detail: ss.id})
			ss.holder = nil
			changed = true
		}
	}
	for _, m := range append([]*stored(nil), q.messages...) {
		if m.lockToken != (UUID{}) && !now.Before(m.lockedUntil) {
			s.events.add(Event{Kind: EventLockExpired, Entity: q.name, MessageID: messageID(m.msg), Sequence: m.seq})
			s.release(q, m, true, now)
			changed = true
			continue
		}
		if !m.expires.IsZero() && !now.Before(m.expires) && !m.locked(now) {
			if q.cfg.DeadLetteringOnMessageExpiration && !q.isDLQ() {
				s.deadLetter(q, m, "TTLExpiredException", "The message expired and was dead lettered.", now)
			} else {
				q.remove(m)
			}
			changed = true
		}
	}
	for id, at := range q.dedup {
		if now.Sub(at) >= q.cfg.DuplicateDetectionHistoryTimeWindow {
			delete(q.dedup, id)
		}
	}
	return changed
}

// nextFor returns the next message a receiver link may take: for a session
// receiver, the first available message of its session in sequence order;
// otherwise the first available message.
func (q *queue) nextFor(l *link, now time.Time) *stored {
	for _, m := range q.messages {
		if l.sessionID != "" || l.sessionBound {
			if m.sessionID != l.sessionID {
				continue
			}
		}
		if m.available(now) {
			return m
		}
	}
	return nil
}

// availableSession returns a session with an available message and no
// live holder, oldest message first.
func (q *queue) availableSession(now time.Time) string {
	for _, m := range q.messages {
		if !m.available(now) || m.sessionID == "" {
			continue
		}
		if ss, ok := q.sessions[m.sessionID]; ok && ss.held(now) {
			continue
		}
		return m.sessionID
	}
	return ""
}

// findByLockToken returns the message of q locked with token.
func (q *queue) findByLockToken(token UUID) *stored {
	for _, m := range q.messages {
		if m.lockToken == token {
			return m
		}
	}
	return nil
}

// findBySeq returns the message of q with sequence number seq.
func (q *queue) findBySeq(seq int64) *stored {
	for _, m := range q.messages {
		if m.seq == seq {
			return m
		}
	}
	return nil
}

// entity resolves an address (queue, or queue/$DeadLetterQueue, in any
// case) to a queue.
func (s *Server) entity(address string) *queue {
	addr := strings.ToLower(strings.TrimPrefix(address, "/"))
	if i := strings.Index(addr, "://"); i >= 0 { // amqp://host/queue
		addr = addr[i+3:]
		if j := strings.IndexByte(addr, '/'); j >= 0 {
			addr = addr[j+1:]
		}
	}
	if base, ok := strings.CutSuffix(addr, deadLetterSuffix); ok {
		if q := s.queues[base]; q != nil {
			return q.dlq
		}
		return nil
	}
	return s.queues[addr]
}

// deliverable renders m as the client receives it: the broker's
// annotations, the header's delivery count, and for peek-lock the lock
// token in the delivery annotations.
func deliverable(q *queue, m *stored, withLock bool, state int64) ([]byte, error) {
	msg := *m.msg
	msg.DeliveryTag = nil
	hdr := amqp.MessageHeader{}
	if m.msg.Header != nil {
		hdr = *m.msg.Header
	}
	hdr.DeliveryCount = m.prior
	msg.Header = &hdr
	ann := make(amqp.Annotations, len(m.msg.Annotations)+6)
	for k, v := range m.msg.Annotations {
		ann[k] = v
	}
	ann["x-opt-sequence-number"] = m.seq
	ann["x-opt-enqueue-sequence-number"] = m.seq
	ann["x-opt-enqueued-time"] = m.enqueued
	if m.sessionID != "" {
		ann["x-opt-partition-key"] = m.sessionID
	}
	if withLock {
		ann["x-opt-locked-until"] = m.lockedUntil
	}
	if m.dlSource != "" {
		ann["x-opt-deadletter-source"] = m.dlSource
	}
	if state != 0 {
		ann["x-opt-message-state"] = state
	}
	msg.Annotations = ann
	if withLock {
		msg.DeliveryAnnotations = amqp.Annotations{"x-opt-lock-token": amqp.UUID(m.lockToken)}
	} else {
		msg.DeliveryAnnotations = nil
	}
	if msg.Properties == nil {
		msg.Properties = &amqp.MessageProperties{}
	}
	return msg.MarshalBinary()
}
