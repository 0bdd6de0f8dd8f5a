package sbemu

import (
	"fmt"
	"strings"
	"time"
)

// faults holds the injected failures; guarded by the server's mutex.
type faults struct {
	sends          []sendFault
	withholdCredit bool
	cbsStatus      int
	cbsDelay       time.Duration
	cbsSet         bool
	linkErrors     map[string]string // entity (lower case) → condition
	outage         outage
}

type sendFault struct {
	condition      string // reject the send with this condition
	dropConnection bool   // cut the TCP connection before the disposition
	store          bool   // ... after storing the message
}

func (f sendFault) describe() string {
	switch {
	case f.condition != "":
		return "send rejected with " + f.condition
	case f.store:
		return "connection dropped after storing a send, before its disposition"
	default:
		return "connection dropped before storing a send"
	}
}

func (f *faults) takeSendFault() (sendFault, bool) {
	if sf, ok := f.throttled(); ok {
		return sf, true
	}
	if len(f.sends) == 0 {
		return sendFault{}, false
	}
	sf := f.sends[0]
	f.sends = f.sends[1:]
	return sf, true
}

func (f *faults) cbs() (int, time.Duration, bool) {
	return f.cbsStatus, f.cbsDelay, f.cbsSet
}

func (f *faults) linkError(address string) string {
	return f.linkErrors[strings.ToLower(address)]
}

// RejectSends makes the next n sends fail with condition, e.g.
// "com.microsoft:server-busy" (retried by the SDK) or
// "amqp:resource-limit-exceeded" (not retried).
func (s *Server) RejectSends(n int, condition string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for range n {
		s.faults.sends = append(s.faults.sends, sendFault{condition: condition})
	}
}

// DropConnectionOnNextSend cuts the TCP connection of the next send after
// its transfer and before its disposition, storing the message first if
// store is set: the sender cannot tell whether the message arrived.
func (s *Server) DropConnectionOnNextSend(store bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults.sends = append(s.faults.sends, sendFault{dropConnection: true, store: store})
}

// WithholdCredit stops (or resumes) granting link credit to senders: their
// sends block until their deadline.
func (s *Server) WithholdCredit(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults.withholdCredit = on
	if !on {
		for l := range s.links() {
			if !l.clientRx && l.kind == kindEntity && l.creditLeft == 0 {
				l.grantCredit()
			}
		}
	}
}

// SetCBS makes every CBS put-token answer status (0: the normal 200) after
// delay.
func (s *Server) SetCBS(status int, delay time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults.cbsStatus, s.faults.cbsDelay, s.faults.cbsSet = status, delay, status != 0 || delay != 0
}

// FailAttach makes links to entity fail to attach with condition ("" to
// stop).
func (s *Server) FailAttach(entity, condition string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.faults.linkErrors == nil {
		s.faults.linkErrors = map[string]string{}
	}
	if condition == "" {
		delete(s.faults.linkErrors, strings.ToLower(entity))
		return
	}
	s.faults.linkErrors[strings.ToLower(entity)] = condition
}

// DetachLinks force-detaches every link to entity (all links if entity is
// empty) with amqp:link:detach-forced, and returns how many.
func (s *Server) DetachLinks(entity string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for l := range s.links() {
		if l.kind != kindEntity || (entity != "" && !strings.EqualFold(l.address, entity)) {
			continue
		}
		ss := l.sess
		ss.c.send(ss.channel, described(codeDetach, l.handle, true, amqpError("amqp:link:detach-forced", "fault injected by the emulator")), nil)
		delete(ss.links, l.handle)
		s.dropLink(l)
		n++
	}
	s.events.add(Event{Kind: EventFault, Entity: entity, Detail: fmt.Sprintf("detached %d links", n)})
	return n
}

// CloseConnections closes every connection with amqp:connection:forced, or
// drops them without a close frame if abrupt, and returns how many.
func (s *Server) CloseConnections(abrupt bool) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for c := range s.conns {
		if abrupt {
			c.closeNow()
		} else {
			c.closeWith(amqpError("amqp:connection:forced", "fault injected by the emulator"))
		}
		n++
	}
	s.events.add(Event{Kind: EventFault, Detail: fmt.Sprintf("closed %d connections", n)})
	return n
}

// ExpireLocks expires every message and session lock of queue now.
func (s *Server) ExpireLocks(queue string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	q := s.entity(queue)
	if q == nil {
		return
	}
	now := s.now()
	for _, st := range q.sessions {
		if st.holder != nil {
			st.lockedUntil = now
		}
	}
	for _, m := range q.messages {
		if m.lockToken != (UUID{}) {
			m.lockedUntil = now
		}
	}
	s.expire(q, now)
	s.events.add(Event{Kind: EventFault, Entity: queue, Detail: "locks expired early"})
	s.dispatch()
}
