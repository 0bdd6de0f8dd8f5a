package sbemu

import (
	"fmt"
	"net"
)

// outage holds the faults that last until turned off, unlike the one-shot
// faults RejectSends and DropConnectionOnNextSend queue; guarded by the
// server's mutex.
type outage struct {
	refuse   bool // close every new connection as soon as it is accepted
	throttle bool // reject every send with com.microsoft:server-busy
}

// conditionServerBusy is how Service Bus rejects a send when the namespace
// is throttling.
const conditionServerBusy = "com.microsoft:server-busy"

// RefuseConnections starts (on) or ends an outage: while it lasts, every new
// connection is closed as soon as it is accepted, and starting it drops the
// open connections without a close frame. Clients see an unreachable
// namespace: their operations fail and their retries fail again until the
// outage ends.
func (s *Server) RefuseConnections(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults.outage.refuse = on
	if !on {
		s.events.add(Event{Kind: EventFault, Detail: "connections accepted again"})
		return
	}
	n := 0
	for c := range s.conns {
		c.closeNow()
		n++
	}
	s.events.add(Event{Kind: EventFault, Detail: fmt.Sprintf("refusing connections; dropped %d", n)})
}

// ThrottleSends makes every send fail with com.microsoft:server-busy while
// on, as a throttled namespace does; the SDK retries such a send and then
// reports the failure.
func (s *Server) ThrottleSends(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults.outage.throttle = on
	detail := "sends accepted again"
	if on {
		detail = "throttling every send (server-busy)"
	}
	s.events.add(Event{Kind: EventFault, Detail: detail})
}

// ClearFaults ends RefuseConnections and ThrottleSends and drops the send
// faults RejectSends and DropConnectionOnNextSend queued and not yet used.
func (s *Server) ClearFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults.outage = outage{}
	s.faults.sends = nil
	s.events.add(Event{Kind: EventFault, Detail: "faults cleared"})
}

// refused closes nc and reports true while connections are refused (the
// accept loop's hook).
func (s *Server) refused(nc net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.faults.outage.refuse {
		return false
	}
	nc.Close()
	s.events.add(Event{Kind: EventFault, Detail: "connection refused: " + nc.RemoteAddr().String()})
	return true
}

// throttled returns the fault every send gets while sends are throttled.
func (f *faults) throttled() (sendFault, bool) {
	if !f.outage.throttle {
		return sendFault{}, false
	}
	return sendFault{condition: conditionServerBusy}, true
}
