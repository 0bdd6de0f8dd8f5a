package sbemu

import "fmt"

// This file is the session layer: session windows, flow, transfers in both
// directions, dispositions and detaches. What a transfer or a disposition
// means for a queue is the broker's business (broker.go).

const (
	sessionWindow = 5000
	linkCredit    = 1000
)

type session struct {
	c       *conn
	channel uint16

	nextIncomingID uint32 // id of the next transfer frame from the client
	incomingLeft   uint32 // frames the client may still send before a flow

	nextOutgoingID uint32 // id of our next transfer frame
	remoteWindow   uint32 // frames the client will still take

	links        map[uint32]*link
	nextDelivery uint32
	deliveries   map[uint32]*delivery // our unsettled deliveries
}

// delivery is a message we handed to a client receiver and it has not
// settled yet.
type delivery struct {
	l     *link
	q     *queue
	m     *stored
	token UUID
}

// end releases a session's links and deliveries.
func (ss *session) end() {
	for _, l := range ss.links {
		ss.c.s.dropLink(l)
	}
	ss.links = map[uint32]*link{}
	ss.deliveries = map[uint32]*delivery{}
}

// sendFlow sends a session flow, or a link flow when l is set.
func (ss *session) sendFlow(l *link, deliveryCount, credit uint32, drain bool) {
	fields := []any{ss.nextIncomingID, ss.incomingLeft, ss.nextOutgoingID, uint32(sessionWindow)}
	if l != nil {
		fields = append(fields, l.handle, deliveryCount, credit, nil, drain)
	}
	ss.c.send(ss.channel, described(codeFlow, fields...), nil)
}

func (ss *session) flow(p perf) error {
	nextIn, hasNextIn := p.u32(0)
	window, _ := p.u32(1)
	if hasNextIn {
		ss.remoteWindow = nextIn + window - ss.nextOutgoingID
	} else {
		ss.remoteWindow = 1 + window - ss.nextOutgoingID
	}
	handle, ok := p.u32(4)
	if !ok {
		return nil
	}
	l := ss.links[handle]
	if l == nil {
		return nil
	}
	if l.clientRx {
		dc, _ := p.u32(5)
		credit, _ := p.u32(6)
		l.credit = dc + credit - l.deliveryCnt
		if p.boolean(8) && l.kind == kindEntity { // drain: use up the credit
			ss.c.s.deliverTo(l)
			l.deliveryCnt += l.credit
			l.credit = 0
			ss.sendFlow(l, l.deliveryCnt, 0, true)
		}
		l.flushRPC()
	}
	if p.boolean(9) { // echo
		ss.sendFlow(l, l.deliveryCnt, l.credit, false)
	}
	return nil
}

// transfer handles a transfer frame from a client sender: it assembles
// multi-frame deliveries and answers each complete one with its outcome.
func (ss *session) transfer(p perf, payload []byte) error {
	ss.nextIncomingID++
	ss.incomingLeft--
	if ss.incomingLeft < sessionWindow/2 {
		ss.incomingLeft = sessionWindow
		ss.sendFlow(nil, 0, 0, false)
	}
	handle, _ := p.u32(0)
	l := ss.links[handle]
	if l == nil || l.clientRx {
		return fmt.Errorf("transfer on unknown or receiving handle %d", handle)
	}
	if !l.inPartial {
		l.partialFirst = p
		l.partial = l.partial[:0]
	}
	l.partial = append(l.partial, payload...)
	if p.boolean(5) { // more
		l.inPartial = true
		return nil
	}
	l.inPartial = false
	first := l.partialFirst
	body := append([]byte(nil), l.partial...)
	l.clientDeliveryCnt++
	l.creditLeft--
	if l.creditLeft < linkCredit/2 && !ss.c.s.faults.withholdCredit {
		l.grantCredit()
	}
	deliveryID, _ := first.u32(1)
	format, _ := first.u32(3)
	settled := first.boolean(4)
	var state Described
	switch l.kind {
	case kindCBS, kindManagement:
		state = ss.c.s.rpc(l, body)
	default:
		var drop bool
		state, drop = ss.c.s.accept(l, body, format)
		if drop {
			ss.c.closeNow()
			return nil
		}
	}
	if !settled {
		ss.c.send(ss.channel, described(codeDisposition, true, deliveryID, nil, true, state), nil)
	}
	return nil
}

// disposition handles the client settling our deliveries.
func (ss *session) disposition(p perf) error {
	if !p.boolean(0) { // only receivers settle our deliveries
		return nil
	}
	first, _ := p.u32(1)
	last, ok := p.u32(2)
	if !ok {
		last = first
	}
	settled := p.boolean(3)
	state, _ := p.described(4)
	s := ss.c.s
	for id := first; ; id++ {
		if d := ss.deliveries[id]; d != nil {
			delete(ss.deliveries, id)
			result := s.settle(d, state)
			if !settled {
				ss.c.send(ss.channel, described(codeDisposition, false, id, nil, true, result), nil)
			}
		}
		if id == last {
			break
		}
	}
	return nil
}

func (ss *session) detach(p perf) error {
	handle, _ := p.u32(0)
	l := ss.links[handle]
	if l == nil {
		return nil
	}
	delete(ss.links, handle)
	ss.c.s.dropLink(l)
	ss.c.send(ss.channel, described(codeDetach, handle, true), nil)
	return nil
}

// sendTransfer sends one delivery, split into frames that fit the client's
// maximum frame size.
func (ss *session) sendTransfer(l *link, deliveryID uint32, tag []byte, settled bool, payload []byte) {
	chunk := int(ss.c.peerMax) - 256
	for first := true; first || len(payload) > 0; first = false {
		n := min(len(payload), chunk)
		more := n < len(payload)
		var body Described
		if first {
			body = described(codeTransfer, l.handle, deliveryID, tag, uint32(0), settled, more)
		} else {
			body = described(codeTransfer, l.handle, nil, nil, nil, nil, more)
		}
		ss.c.send(ss.channel, body, payload[:n])
		payload = payload[n:]
		ss.nextOutgoingID++
		if ss.remoteWindow > 0 {
			ss.remoteWindow--
		}
	}
}
