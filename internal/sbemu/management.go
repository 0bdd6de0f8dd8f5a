package sbemu

import (
	"fmt"
	"strings"
	"time"

	"github.com/Azure/go-amqp"
)

// This file answers requests on <entity>/$management: the Service Bus
// operations on locks, sessions, peeking, deferral and scheduling.

// management answers a $management operation on l's entity.
func (s *Server) management(l *link, op string, req *amqp.Message) (int32, string, any) {
	q := l.mgmtQueue
	body := asStringMap(req.Value)
	now := s.now()
	op = strings.TrimPrefix(op, "com.microsoft:")
	switch op {
	case "renew-lock":
		var exps []time.Time
		for _, tok := range lockTokens(body["lock-tokens"]) {
			m := q.findByLockToken(tok)
			if m == nil || !m.locked(now) {
				return 410, "the lock supplied is invalid: either the lock expired, or the message has already been removed", nil
			}
			if m.sessionID != "" && q.cfg.RequiresSession {
				return 400, "renew-lock is not supported for session messages; renew the session lock", nil
			}
			m.lockedUntil = now.Add(q.cfg.LockDuration)
			exps = append(exps, m.lockedUntil)
		}
		return 200, "OK", map[string]any{"expirations": exps}
	case "update-disposition":
		status, _ := body["disposition-status"].(string)
		for _, tok := range lockTokens(body["lock-tokens"]) {
			m := q.findByLockToken(tok)
			if m == nil || !m.locked(now) {
				return 410, "the lock supplied is invalid: either the lock expired, or the message has already been removed", nil
			}
			switch status {
			case "completed":
				s.applyOutcome(q, m, perf{code: codeAccepted}, now)
			case "abandoned":
				s.applyOutcome(q, m, perf{code: codeModified}, now)
			case "defered", "deferred":
				s.applyOutcome(q, m, perf{code: codeModified, fields: []any{false, true}}, now)
			case "suspended":
				reason, _ := body["deadletter-reason"].(string)
				desc, _ := body["deadletter-description"].(string)
				s.deadLetter(q, m, reason, desc, now)
			default:
				return 400, "unknown disposition-status " + status, nil
			}
		}
		return 200, "OK", nil
	case "peek-message":
		from, _ := body["from-sequence-number"].(int64)
		count, _ := body["message-count"].(int32)
		var out []any
		for _, m := range q.messages {
			if m.seq < from || len(out) >= int(max(count, 1)) {
				continue
			}
			state := int64(0)
			if m.deferred {
				state = 1
			} else if now.Before(m.visible) {
				state = 2
			}
			b, err := deliverable(q, m, false, state)
			if err != nil {
				return 500, err.Error(), nil
			}
			out = append(out, map[string]any{"message": b})
		}
		if len(out) == 0 {
			return 204, "No messages to peek", nil
		}
		return 200, "OK", map[string]any{"messages": out}
	case "receive-by-sequence-number":
		seqs, _ := body["sequence-numbers"].([]int64)
		var out []any
		for _, seq := range seqs {
			m := q.findBySeq(seq)
			if m == nil || !m.deferred {
				continue
			}
			m.deferred = false
			m.lockToken = newLockToken()
			m.lockedUntil = now.Add(q.cfg.LockDuration)
			b, err := deliverable(q, m, true, 0)
			if err != nil {
				return 500, err.Error(), nil
			}
			out = append(out, map[string]any{"message": b, "lock-token": amqp.UUID(m.lockToken)})
		}
		if len(out) == 0 {
			return 204, "no deferred messages with those sequence numbers", nil
		}
		return 200, "OK", map[string]any{"messages": out}
	case "renew-session-lock":
		id, _ := body["session-id"].(string)
		st := q.sessions[id]
		if st == nil || !st.held(now) {
			return 410, "the session lock was lost; accept the session again", nil
		}
		st.lockedUntil = now.Add(q.cfg.LockDuration)
		for _, m := range q.messages {
			if m.sessionID == id && m.locked(now) {
				m.lockedUntil = st.lockedUntil
			}
		}
		return 200, "OK", map[string]any{"expiration": st.lockedUntil}
	case "get-session-state":
		id, _ := body["session-id"].(string)
		st := q.sessions[id]
		if st == nil || !st.held(now) {
			return 410, "the session lock was lost; accept the session again", nil
		}
		var state any
		if st.state != nil {
			state = st.state
		}
		return 200, "OK", map[string]any{"session-state": state}
	case "set-session-state":
		id, _ := body["session-id"].(string)
		st := q.sessions[id]
		if st == nil || !st.held(now) {
			return 410, "the session lock was lost; accept the session again", nil
		}
		b, _ := body["session-state"].([]byte)
		if len(b) == 0 {
			st.state = nil
		} else {
			st.state = append([]byte(nil), b...)
		}
		return 200, "OK", nil
	case "schedule-message":
		list, _ := body["messages"].([]any)
		var seqs []int64
		for _, it := range list {
			entry := asStringMap(it)
			raw, _ := entry["message"].([]byte)
			m := &amqp.Message{}
			if err := m.UnmarshalBinary(raw); err != nil {
				return 400, "undecodable scheduled message: " + err.Error(), nil
			}
			if _, err := s.enqueue(q, m, now); err != nil {
				return 400, err.Error(), nil
			}
			seqs = append(seqs, q.nextSeq-1)
		}
		return 200, "OK", map[string]any{"sequence-numbers": seqs}
	case "cancel-scheduled-message":
		seqs, _ := body["sequence-numbers"].([]int64)
		for _, seq := range seqs {
			if m := q.findBySeq(seq); m != nil && now.Before(m.visible) {
				q.remove(m)
			}
		}
		return 200, "OK", nil
	case "get-message-sessions":
		return 204, "no sessions", nil
	default:
		return 501, "operation " + op + " is not implemented by the emulator", nil
	}
}

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

func lockTokens(v any) []UUID {
	var out []UUID
	switch t := v.(type) {
	case []amqp.UUID:
		for _, u := range t {
			out = append(out, UUID(u))
		}
	case []any:
		for _, u := range t {
			if x, ok := u.(amqp.UUID); ok {
				out = append(out, UUID(x))
			}
		}
	case amqp.UUID:
		out = append(out, UUID(t))
	}
	return out
}
