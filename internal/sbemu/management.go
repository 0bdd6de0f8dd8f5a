package sbemu

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/Azure/go-amqp"
)

// This file answers requests on <entity>/$management: the Service Bus
// operations on locks, sessions, peeking, deferral and scheduling. Request
// bodies are maps with string keys; numbers may come in any integer type
// (the Go SDK and the JavaScript SDK pick different ones). Failures carry
// the errorCondition a namespace sends, which is how the JavaScript SDK
// tells a lost lock (410) from other errors.

const (
	condMessageLockLost = "com.microsoft:message-lock-lost"
	condSessionLockLost = "com.microsoft:session-lock-lost"
	condMessageNotFound = "com.microsoft:message-not-found"
	condArgument        = "com.microsoft:argument-error"

	descMessageLockLost = "the lock supplied is invalid: either the lock expired, or the message has already been removed from the queue"
	descSessionLockLost = "the session lock was lost or the session is not accepted: accept the session again"
)

// management answers a $management operation on l's entity.
func (s *Server) management(l *link, op string, req *amqp.Message) rpcReply {
	q := l.mgmtQueue
	body := asStringMap(req.Value)
	now := s.now()
	switch strings.TrimPrefix(op, "com.microsoft:") {
	case "renew-lock":
		return s.renewLock(q, body, now)
	case "update-disposition":
		return s.updateDisposition(q, body, now)
	case "peek-message":
		return s.peek(l, q, body, req, now)
	case "receive-by-sequence-number":
		return s.receiveBySequence(q, body, now)
	case "renew-session-lock":
		st, r := s.heldSession(q, body, now)
		if st == nil {
			return r
		}
		st.lockedUntil = now.Add(q.cfg.LockDuration)
		for _, m := range q.messages {
			if m.sessionID == st.id && m.locked(now) {
				m.lockedUntil = st.lockedUntil
			}
		}
		return okReply(map[string]any{"expiration": st.lockedUntil})
	case "get-session-state":
		st, r := s.heldSession(q, body, now)
		if st == nil {
			return r
		}
		var state any
		if st.state != nil {
			state = st.state
		}
		return okReply(map[string]any{"session-state": state})
	case "set-session-state":
		st, r := s.heldSession(q, body, now)
		if st == nil {
			return r
		}
		// A nil state arrives as null from some clients and as empty
		// binary from the Go SDK; both clear it.
		b, _ := body["session-state"].([]byte)
		if len(b) == 0 {
			st.state = nil
		} else {
			st.state = append([]byte(nil), b...)
		}
		st.stateSet = now
		return okReply(nil)
	case "schedule-message":
		return s.schedule(q, body, now)
	case "cancel-scheduled-message":
		for _, seq := range sequenceNumbers(body["sequence-numbers"]) {
			if m := q.findBySeq(seq); m != nil && now.Before(m.visible) {
				q.remove(m)
			}
		}
		return okReply(nil)
	case "get-message-sessions":
		return s.listSessions(q, body, now)
	default:
		return failReply(501, "amqp:not-implemented", "operation "+op+" is not implemented by the emulator")
	}
}

// heldSession returns the session a request names, if it is locked.
func (s *Server) heldSession(q *queue, body map[string]any, now time.Time) (*sessionState, rpcReply) {
	id, _ := body["session-id"].(string)
	st := q.sessions[id]
	if st == nil || !st.held(now) {
		return nil, failReply(410, condSessionLockLost, descSessionLockLost)
	}
	return st, rpcReply{}
}

func (s *Server) renewLock(q *queue, body map[string]any, now time.Time) rpcReply {
	tokens := lockTokens(body["lock-tokens"])
	var msgs []*stored
	for _, tok := range tokens {
		m := q.findByLockToken(tok)
		if m == nil || !m.locked(now) {
			return failReply(410, condMessageLockLost, descMessageLockLost)
		}
		if m.sessionID != "" && q.cfg.RequiresSession {
			return failReply(400, "amqp:not-allowed", "messages of a session are locked by the session lock: renew the session lock instead")
		}
		msgs = append(msgs, m)
	}
	exps := make([]time.Time, 0, len(msgs))
	for _, m := range msgs {
		m.lockedUntil = now.Add(q.cfg.LockDuration)
		exps = append(exps, m.lockedUntil)
	}
	return okReply(map[string]any{"expirations": exps})
}

// updateDisposition settles messages by lock token: all of them, or none
// when one lock is lost.
func (s *Server) updateDisposition(q *queue, body map[string]any, now time.Time) rpcReply {
	status, _ := body["disposition-status"].(string)
	o := outcome{props: propertiesToModify(asStringMap(body["properties-to-modify"]))}
	switch status {
	case "completed":
		o.kind = outcomeComplete
	case "abandoned":
		o.kind = outcomeAbandon
	case "defered", "deferred": // the SDKs spell it "defered"
		o.kind = outcomeDefer
	case "suspended":
		o.kind = outcomeDeadLetter
		if r, isStr := body["deadletter-reason"].(string); isStr {
			o.props["DeadLetterReason"] = r
		}
		if d, isStr := body["deadletter-description"].(string); isStr {
			o.props["DeadLetterErrorDescription"] = d
		}
	default:
		return failReply(400, condArgument, fmt.Sprintf("unknown disposition-status %q: use completed, abandoned, defered or suspended", status))
	}
	var msgs []*stored
	for _, tok := range lockTokens(body["lock-tokens"]) {
		m := q.findByLockToken(tok)
		if m == nil || !m.locked(now) {
			return failReply(410, condMessageLockLost, descMessageLockLost)
		}
		if m.sessionID != "" && q.cfg.RequiresSession {
			if st := q.sessions[m.sessionID]; st == nil || !st.held(now) {
				return failReply(410, condSessionLockLost, descSessionLockLost)
			}
		}
		msgs = append(msgs, m)
	}
	for _, m := range msgs {
		s.applyOutcome(q, m, o, now)
	}
	return okReply(nil)
}

// peek returns messages from a sequence number on without locking them;
// for a session receiver (named in the request, or the link the request is
// associated with), only that session's.
func (s *Server) peek(l *link, q *queue, body map[string]any, req *amqp.Message, now time.Time) rpcReply {
	from, _ := asInt64(body["from-sequence-number"])
	count, _ := asInt64(body["message-count"])
	count = max(count, 1)
	session, filtered := body["session-id"].(string)
	if !filtered {
		if name, isStr := req.ApplicationProperties["associated-link-name"].(string); isStr {
			if al := l.sess.c.linkByName(name); al != nil && al.sessionBound && al.sessionID != "" {
				session, filtered = al.sessionID, true
			}
		}
	}
	var out []any
	for _, m := range q.messages {
		if m.seq < from || (filtered && m.sessionID != session) {
			continue
		}
		if int64(len(out)) >= count {
			break
		}
		b, err := deliverable(m, false, now)
		if err != nil {
			return failReply(500, "amqp:internal-error", err.Error())
		}
		out = append(out, map[string]any{"message": b})
	}
	if len(out) == 0 {
		return rpcReply{status: 204, desc: "no messages to peek"}
	}
	return okReply(map[string]any{"messages": out})
}

// receiveBySequence receives deferred messages: all that were asked for,
// or none.
func (s *Server) receiveBySequence(q *queue, body map[string]any, now time.Time) rpcReply {
	mode, hasMode := asInt64(body["receiver-settle-mode"])
	peekLock := !hasMode || mode == 1
	var msgs []*stored
	for _, seq := range sequenceNumbers(body["sequence-numbers"]) {
		m := q.findBySeq(seq)
		if m == nil || !m.deferred || m.locked(now) {
			return failReply(404, condMessageNotFound, fmt.Sprintf("failed to lock one or more specified messages: message %d of %s is not deferred, or is locked", seq, q.name))
		}
		if m.sessionID != "" && q.cfg.RequiresSession {
			if st := q.sessions[m.sessionID]; st == nil || !st.held(now) {
				return failReply(410, condSessionLockLost, descSessionLockLost)
			}
		}
		msgs = append(msgs, m)
	}
	if len(msgs) == 0 {
		return failReply(400, condArgument, "no sequence-numbers in the request")
	}
	var out []any
	for _, m := range msgs {
		// It stays deferred (state 1) until settled: abandoned, it goes back
		// to the deferred messages, not to the queue.
		entry := map[string]any{}
		if peekLock {
			s.lockMessage(q, m, nil, now)
			entry["lock-token"] = amqp.UUID(m.lockToken)
		}
		b, err := deliverable(m, peekLock, now)
		if err != nil {
			return failReply(500, "amqp:internal-error", err.Error())
		}
		if !peekLock {
			q.remove(m)
		}
		entry["message"] = b
		out = append(out, entry)
	}
	return okReply(map[string]any{"messages": out})
}

// schedule enqueues messages with their scheduled-enqueue-time annotation:
// all of them, or none when one is unfit.
func (s *Server) schedule(q *queue, body map[string]any, now time.Time) rpcReply {
	list, _ := body["messages"].([]any)
	var msgs []*amqp.Message
	for i, it := range list {
		raw, _ := asStringMap(it)["message"].([]byte)
		m := &amqp.Message{}
		if err := m.UnmarshalBinary(raw); err != nil {
			return failReply(400, condArgument, fmt.Sprintf("scheduled message %d is not an encoded AMQP message: %v", i, err))
		}
		if q.cfg.RequiresSession && !q.isDLQ() && (m.Properties == nil || m.Properties.GroupID == nil || *m.Properties.GroupID == "") {
			return failReply(400, condArgument, fmt.Sprintf("the queue %s requires sessions: set a session ID on scheduled message %d", q.name, i))
		}
		msgs = append(msgs, m)
	}
	seqs := []int64{}
	for _, m := range msgs {
		st, err := s.enqueue(q, m, now)
		if err != nil {
			return failReply(400, condArgument, err.Error())
		}
		if st != nil {
			seqs = append(seqs, st.seq)
		}
	}
	return okReply(map[string]any{"sequence-numbers": seqs})
}

// listSessions lists sessions, sorted by ID, skip and top applied. As on
// Service Bus, last-updated-time selects: a time in the future (the Go SDK
// sends year 10000 by default) lists the sessions that have messages;
// another lists those whose state was set after it.
func (s *Server) listSessions(q *queue, body map[string]any, now time.Time) rpcReply {
	skip, _ := asInt64(body["skip"])
	top, hasTop := asInt64(body["top"])
	since, hasSince := body["last-updated-time"].(time.Time)
	seen := map[string]bool{}
	if !hasSince || since.After(now) {
		for _, m := range q.messages {
			if m.sessionID != "" {
				seen[m.sessionID] = true
			}
		}
	} else {
		for id, st := range q.sessions {
			if st.stateSet.After(since) {
				seen[id] = true
			}
		}
	}
	ids := make([]string, 0, len(seen))
	for id := range seen {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	ids = ids[min(int(max(skip, 0)), len(ids)):]
	if hasTop && top >= 0 && int(top) < len(ids) {
		ids = ids[:top]
	}
	if len(ids) == 0 {
		return rpcReply{status: 204, desc: "no sessions"}
	}
	return okReply(map[string]any{"sessions-ids": ids, "skip": int32(skip) + int32(len(ids))})
}

// asStringMap reads a request map, whatever its key types.
func asStringMap(v any) map[string]any {
	switch m := v.(type) {
	case map[string]any:
		return m
	case map[any]any:
		out := make(map[string]any, len(m))
		for k, v := range m {
			out[fmt.Sprint(k)] = v
		}
		return out
	}
	return map[string]any{}
}

// lockTokens reads lock tokens: an array of uuid, a list, or one.
func lockTokens(v any) []UUID {
	var out []UUID
	switch t := v.(type) {
	case []amqp.UUID:
		for _, u := range t {
			out = append(out, UUID(u))
		}
	case []any:
		for _, u := range t {
			if x, isUUID := u.(amqp.UUID); isUUID {
				out = append(out, UUID(x))
			}
		}
	case amqp.UUID:
		out = append(out, UUID(t))
	}
	return out
}

// sequenceNumbers reads sequence numbers: an array of long, or a list of
// integers.
func sequenceNumbers(v any) []int64 {
	switch t := v.(type) {
	case []int64:
		return t
	case []any:
		var out []int64
		for _, x := range t {
			if n, isInt := asInt64(x); isInt {
				out = append(out, n)
			}
		}
		return out
	}
	return nil
}
