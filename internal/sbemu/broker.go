package sbemu

import (
	"fmt"
	"strings"
	"time"

	"github.com/Azure/go-amqp"
)

// This file is the broker: queues, sequence numbers, locks, sessions,
// settlement, dead-lettering and expiry. It decides what happens to
// messages; the connection code (conn.go, session.go, link.go) only moves
// frames. Everything here runs under the server's mutex.

const (
	deadLetterSuffix         = "/$deadletterqueue"
	transferDeadLetterSuffix = "/$transfer/$deadletterqueue"
)

// queue is a queue or a dead-letter sub-queue.
type queue struct {
	cfg  QueueConfig
	name string // as configured
	dlq  *queue // nil for a dead-letter queue
	// transferDLQ holds messages that failed to be forwarded; the emulator
	// does not forward, so it stays empty, but clients may open it.
	transferDLQ *queue
	parent      *queue // the main queue of a dead-letter queue
	nextSeq     int64
	messages    []*stored // by sequence number
	dedup       map[string]time.Time
	sessions    map[string]*sessionState
}

func newQueue(cfg QueueConfig) *queue {
	cfg.setDefaults()
	q := &queue{cfg: cfg, name: cfg.Name, nextSeq: 1, dedup: map[string]time.Time{}, sessions: map[string]*sessionState{}}
	q.dlq = newSubQueue(q, "/$DeadLetterQueue")
	q.transferDLQ = newSubQueue(q, "/$Transfer/$DeadLetterQueue")
	return q
}

// newSubQueue makes a dead-letter sub-queue of q.
func newSubQueue(q *queue, suffix string) *queue {
	name := q.cfg.Name + suffix
	return &queue{cfg: QueueConfig{Name: name, LockDuration: q.cfg.LockDuration, MaxDeliveryCount: 1 << 30,
		MaxMessageSizeBytes: q.cfg.MaxMessageSizeBytes}, name: name, parent: q, nextSeq: 1,
		dedup: map[string]time.Time{}, sessions: map[string]*sessionState{}}
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
	stateSet    time.Time // when the state was last set
}

func (s *sessionState) held(now time.Time) bool { return s.holder != nil && now.Before(s.lockedUntil) }

// enqueue adds msg to q. It returns the stored message, or nil when the
// message is a duplicate that was dropped.
func (s *Server) enqueue(q *queue, msg *amqp.Message, now time.Time) (*stored, error) {
	m := &stored{msg: msg, enqueued: now, visible: now}
	if msg.Properties != nil && msg.Properties.GroupID != nil {
		m.sessionID = *msg.Properties.GroupID
	}
	if q.cfg.RequiresSession && m.sessionID == "" && !q.isDLQ() {
		return nil, fmt.Errorf("the queue %s requires sessions: set a session ID on every message", q.name)
	}
	id := messageID(msg)
	if q.cfg.RequiresDuplicateDetection && id != "" {
		if seen, dup := q.dedup[id]; dup && now.Sub(seen) < q.cfg.DuplicateDetectionHistoryTimeWindow {
			s.events.add(Event{Kind: EventDuplicate, Entity: q.name, MessageID: id})
			return nil, nil
		}
		q.dedup[id] = now
	}
	m.seq = q.nextSeq
	q.nextSeq++
	if t, isTime := msg.Annotations["x-opt-scheduled-enqueue-time"].(time.Time); isTime && t.After(now) {
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
	return m, nil
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

// deadLetter moves m from q to q's dead-letter queue, with props (the
// reason, the description, and any properties the client modified) set
// among its application properties.
func (s *Server) deadLetter(q *queue, m *stored, props map[string]any, now time.Time) {
	if q.isDLQ() { // a dead letter cannot be dead-lettered again
		m.unlock()
		return
	}
	q.remove(m)
	m.unlock()
	msg := *m.msg
	msg.ApplicationProperties = withProperties(msg.ApplicationProperties, props)
	dl := &stored{seq: q.dlq.nextSeq, msg: &msg, enqueued: m.enqueued, visible: now, prior: m.prior,
		sessionID: m.sessionID, dlSource: q.name}
	q.dlq.nextSeq++
	q.dlq.messages = append(q.dlq.messages, dl)
	reason, _ := props["DeadLetterReason"].(string)
	s.events.add(Event{Kind: EventDeadLettered, Entity: q.name, MessageID: messageID(m.msg), Sequence: m.seq, Detail: reason})
}

// deadLetterReason is what the broker itself sets when it dead-letters.
func deadLetterReason(reason, description string) map[string]any {
	return map[string]any{"DeadLetterReason": reason, "DeadLetterErrorDescription": description}
}

// withProperties returns props merged over app, as a new map.
func withProperties(app, props map[string]any) map[string]any {
	if len(props) == 0 {
		return app
	}
	out := make(map[string]any, len(app)+len(props))
	for k, v := range app {
		out[k] = v
	}
	for k, v := range props {
		out[k] = v
	}
	return out
}

// propertiesToModify keeps the entries of a client's properties-to-modify
// that can be application properties (simple values), converted to the
// types the message encoder knows.
func propertiesToModify(in map[string]any) map[string]any {
	out := make(map[string]any, len(in))
	for k, v := range in {
		switch v := v.(type) {
		case Symbol:
			out[k] = amqp.Symbol(v)
		case UUID:
			out[k] = amqp.UUID(v)
		case nil, bool, string, []byte, time.Time, amqp.UUID, amqp.Symbol,
			int8, int16, int32, int64, uint8, uint16, uint32, uint64, float32, float64:
			out[k] = v
		}
	}
	return out
}

// mapOfNames reads an AMQP map with string or symbol keys.
func mapOfNames(m *Map) map[string]any {
	out := map[string]any{}
	if m == nil {
		return out
	}
	for i, k := range m.Keys {
		switch k := k.(type) {
		case string:
			out[k] = m.Values[i]
		case Symbol:
			out[string(k)] = m.Values[i]
		}
	}
	return out
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
		s.deadLetter(q, m, deadLetterReason("MaxDeliveryCountExceeded",
			fmt.Sprintf("Message could not be consumed after %d delivery attempts.", q.cfg.MaxDeliveryCount)), now)
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
			s.releaseSession(q, ss, true, now)
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
				s.deadLetter(q, m, deadLetterReason("TTLExpiredException", "The message expired and was dead lettered."), now)
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

// entity resolves an address (queue, queue/$DeadLetterQueue or
// queue/$Transfer/$DeadLetterQueue, in any case) to a queue.
func (s *Server) entity(address string) *queue {
	addr := strings.ToLower(strings.TrimPrefix(address, "/"))
	if i := strings.Index(addr, "://"); i >= 0 { // amqp://host/queue
		addr = addr[i+3:]
		if j := strings.IndexByte(addr, '/'); j >= 0 {
			addr = addr[j+1:]
		}
	}
	if base, ok := strings.CutSuffix(addr, transferDeadLetterSuffix); ok {
		if q := s.queues[base]; q != nil {
			return q.transferDLQ
		}
		return nil
	}
	if base, ok := strings.CutSuffix(addr, deadLetterSuffix); ok {
		if q := s.queues[base]; q != nil {
			return q.dlq
		}
		return nil
	}
	return s.queues[addr]
}

// accept takes what a client sender sent on l: one message, or a batch. It
// returns the outcome to confirm, or drop when an injected fault cuts the
// connection instead. Send faults are applied here, and only here.
func (s *Server) accept(l *link, body []byte, format uint32) (state Described, drop bool) {
	q := l.q
	if f, ok := s.faults.takeSendFault(); ok {
		s.events.add(Event{Kind: EventFault, Conn: l.sess.c.id, Link: l.name, Entity: q.name, Detail: f.describe()})
		switch {
		case f.condition != "":
			return described(codeRejected, amqpError(f.condition, "fault injected by the emulator")), false
		case f.dropConnection:
			if f.store {
				s.enqueueBody(q, body, format)
			}
			return Described{}, true
		}
	}
	if len(body) > q.cfg.MaxMessageSizeBytes {
		return described(codeRejected, amqpError("amqp:link:message-size-exceeded",
			fmt.Sprintf("the message of %d bytes exceeds the limit of %d bytes", len(body), q.cfg.MaxMessageSizeBytes))), false
	}
	if err := s.enqueueBody(q, body, format); err != nil {
		return described(codeRejected, amqpError("amqp:not-allowed", err.Error())), false
	}
	return described(codeAccepted), false
}

// enqueueBody decodes a transfer's message or batch and enqueues it, all or
// nothing.
func (s *Server) enqueueBody(q *queue, body []byte, format uint32) error {
	var msgs []*amqp.Message
	env := &amqp.Message{}
	if err := env.UnmarshalBinary(body); err != nil {
		return fmt.Errorf("undecodable message: %w", err)
	}
	if format == batchFormat {
		for _, d := range env.Data {
			m := &amqp.Message{}
			if err := m.UnmarshalBinary(d); err != nil {
				return fmt.Errorf("undecodable message in batch: %w", err)
			}
			msgs = append(msgs, m)
		}
	} else {
		msgs = append(msgs, env)
	}
	if q.cfg.RequiresSession {
		for _, m := range msgs {
			if m.Properties == nil || m.Properties.GroupID == nil || *m.Properties.GroupID == "" {
				return fmt.Errorf("the queue %s requires sessions: set a session ID on every message", q.name)
			}
		}
	}
	now := s.now()
	for _, m := range msgs {
		if _, err := s.enqueue(q, m, now); err != nil {
			return err
		}
	}
	return nil
}

// outcomeKind is how a client ends its hold on a locked message.
type outcomeKind int

const (
	outcomeComplete   outcomeKind = iota
	outcomeAbandon                // available again, delivery counted
	outcomeDefer                  // set aside until received by sequence number
	outcomeDeadLetter             // moved to the dead-letter queue
	outcomeRelease                // available again, not counted
)

// outcome is a settlement: its kind and the application properties to set
// (for a dead letter, its reason and description among them).
type outcome struct {
	kind  outcomeKind
	props map[string]any
}

// outcomeOf reads a delivery state from a link disposition the way Service
// Bus does: accepted completes; modified abandons, or defers when
// undeliverable-here, its message-annotations being the properties to
// modify; rejected dead-letters, its error's info carrying the reason, the
// description and the properties to modify; released gives the message
// back without counting a delivery.
func outcomeOf(state perf) (outcome, bool) {
	switch state.code {
	case codeAccepted:
		return outcome{kind: outcomeComplete}, true
	case codeModified:
		o := outcome{kind: outcomeAbandon, props: propertiesToModify(mapOfNames(state.mapField(2)))}
		if state.boolean(1) {
			o.kind = outcomeDefer
		}
		return o, true
	case codeRejected:
		info := map[string]any{}
		if e, isErr := state.described(0); isErr {
			info = mapOfNames(e.mapField(2))
		}
		// A reason or description left out (or null) is not set.
		for _, k := range []string{"DeadLetterReason", "DeadLetterErrorDescription"} {
			if info[k] == nil {
				delete(info, k)
			}
		}
		return outcome{kind: outcomeDeadLetter, props: propertiesToModify(info)}, true
	case codeReleased:
		return outcome{kind: outcomeRelease}, true
	}
	return outcome{}, false
}

// settle applies a client's disposition to a delivery and returns the
// state to confirm: the outcome reached, or rejected with
// message-lock-lost.
func (s *Server) settle(d *delivery, state perf) Described {
	now := s.now()
	m, q := d.m, d.q
	lost := m.lockToken != d.token || !m.locked(now) || q.findBySeq(m.seq) != m
	if d.l.sessionBound {
		if st := q.sessions[d.l.sessionID]; st == nil || st.holder != d.l || !st.held(now) {
			lost = true
		}
	}
	if lost {
		return described(codeRejected, amqpError(condMessageLockLost, descMessageLockLost))
	}
	o, known := outcomeOf(state)
	if !known {
		return described(codeRejected, amqpError("amqp:not-implemented",
			fmt.Sprintf("delivery state 0x%x: settle with accepted, modified, rejected or released", state.code)))
	}
	s.applyOutcome(q, m, o, now)
	switch o.kind {
	case outcomeComplete:
		return described(codeAccepted)
	case outcomeAbandon:
		return described(codeModified)
	case outcomeDefer:
		return described(codeModified, nil, true)
	case outcomeDeadLetter:
		// Rejected without an error: the SDKs read an error as a failure.
		return described(codeRejected)
	default:
		return described(codeReleased)
	}
}

// applyOutcome settles a locked message.
func (s *Server) applyOutcome(q *queue, m *stored, o outcome, now time.Time) {
	id := messageID(m.msg)
	if o.kind != outcomeDeadLetter && len(o.props) > 0 {
		msg := *m.msg
		msg.ApplicationProperties = withProperties(msg.ApplicationProperties, o.props)
		m.msg = &msg
	}
	switch o.kind {
	case outcomeComplete:
		q.remove(m)
		s.events.add(Event{Kind: EventSettled, Entity: q.name, MessageID: id, Sequence: m.seq, Detail: "completed"})
	case outcomeDeadLetter:
		s.deadLetter(q, m, o.props, now)
	case outcomeDefer:
		m.unlock()
		m.deferred = true
		s.events.add(Event{Kind: EventSettled, Entity: q.name, MessageID: id, Sequence: m.seq, Detail: "deferred"})
	case outcomeAbandon:
		s.events.add(Event{Kind: EventSettled, Entity: q.name, MessageID: id, Sequence: m.seq, Detail: "abandoned"})
		s.release(q, m, true, now)
	case outcomeRelease:
		s.release(q, m, false, now)
	}
}

// deliverTo hands receiver link l as many messages as its credit and the
// session window allow: the next available message for it, locked in
// peek-lock mode, deleted in receive-and-delete mode.
func (s *Server) deliverTo(l *link) {
	if l.pendingAccept || l.kind != kindEntity || !l.clientRx {
		return
	}
	now := s.now()
	for l.canSend() {
		if l.sessionBound {
			st := l.q.sessions[l.sessionID]
			if st == nil || st.holder != l || !st.held(now) {
				return
			}
		}
		m := l.q.nextFor(l, now)
		if m == nil {
			return
		}
		if m.lockToken != (UUID{}) {
			// Its lock ran out before the expiry tick came round: the
			// delivery it ended counts, as it would have a moment later.
			s.events.add(Event{Kind: EventLockExpired, Entity: l.q.name, MessageID: messageID(m.msg), Sequence: m.seq})
			s.release(l.q, m, true, now)
			continue
		}
		settled := !l.peekLock
		if !settled {
			s.lockMessage(l.q, m, l, now)
		}
		token := m.lockToken
		payload, err := deliverable(m, !settled, now)
		if err != nil {
			s.log("encode message %d: %v", m.seq, err)
			return
		}
		if settled {
			l.q.remove(m)
		}
		l.transmit(&delivery{l: l, q: l.q, m: m, token: token}, dotnetOrder(token), settled, payload)
		s.events.add(Event{Kind: EventDelivered, Conn: l.sess.c.id, Link: l.name, Entity: l.q.name, MessageID: messageID(m.msg), Sequence: m.seq})
	}
}

// lockSession gives session id of q to holder until the lock duration
// passes.
func (s *Server) lockSession(q *queue, id string, holder *link, now time.Time) *sessionState {
	st := q.sessions[id]
	if st == nil {
		st = &sessionState{id: id}
		q.sessions[id] = st
	}
	if st.holder != nil && !st.held(now) {
		// The lock ran out before the expiry tick came round: expire it
		// first, so that the messages received under it count that
		// delivery.
		s.events.add(Event{Kind: EventSessionLockExpired, Entity: q.name, Detail: st.id})
		s.releaseSession(q, st, true, now)
	}
	st.holder = holder
	st.lockedUntil = now.Add(q.cfg.LockDuration)
	return st
}

// lockMessage locks m for holder (nil when received through
// $management). A message of a session is locked by its session's lock:
// it lasts as long as the session lock, and goes with it.
func (s *Server) lockMessage(q *queue, m *stored, holder *link, now time.Time) {
	m.lockToken, m.holder = newLockToken(), holder
	m.lockedUntil = now.Add(q.cfg.LockDuration)
	if st := q.sessions[m.sessionID]; m.sessionID != "" && st != nil && st.held(now) {
		m.lockedUntil = st.lockedUntil
	}
}

// linkGone releases what a detached link held: its session, if any.
// Messages it received outside a session keep their locks until they
// expire, as on Service Bus (clients then settle through $management).
//
// A session is released at once when the client ends the link (detach, end
// or close) or the server forces it off; when the connection is lost
// instead, the session stays locked until its lock expires, as a namespace
// cannot tell a crashed client from a slow one ("the lock is released when
// Close is called, or when the lock expires in cases in which the
// application is unable to perform the close operation", Microsoft's
// message sessions documentation).
func (s *Server) linkGone(l *link) {
	if l.q == nil || !l.sessionBound || l.sess.c.lost {
		return
	}
	if st, held := l.q.sessions[l.sessionID]; held && st.holder == l {
		// A session whose lock ran out before the holder let go expired,
		// whether or not the expiry timer has come round yet: its
		// deliveries count.
		now := s.now()
		s.releaseSession(l.q, st, !now.Before(st.lockedUntil), now)
	}
}

// releaseSession ends the lock on a session. The messages received under it
// have no locks of their own: the session lock is theirs, so they are
// released with it, available again in sequence order to the session's next
// holder. Service Bus counts those deliveries when the session lock expires,
// and not when the holder closes the session (the table "Impact of delivery
// count" in Microsoft's message sessions documentation; the Service Bus team
// told the JavaScript SDK's authors that only expiry increments it).
func (s *Server) releaseSession(q *queue, st *sessionState, expired bool, now time.Time) {
	st.holder = nil
	st.lockedUntil = time.Time{}
	for _, m := range append([]*stored(nil), q.messages...) {
		if m.sessionID == st.id && m.lockToken != (UUID{}) {
			s.release(q, m, expired, now)
		}
	}
}
