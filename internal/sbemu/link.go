package sbemu

import (
	"encoding/binary"
	"fmt"
	"strings"
	"time"
)

// This file is the link layer: attach and its reply, what kind of node a
// link talks to, credit, and sending deliveries and RPC responses. Which
// message a receiver gets is the broker's business (broker.go).

// sessionFilter is the descriptor of Service Bus's session filter.
const sessionFilter = 0x00000137000000C

type linkKind int

const (
	kindEntity linkKind = iota
	kindCBS
	kindManagement
)

type link struct {
	sess      *session
	name      string
	handle    uint32
	clientRx  bool // the client receives on this link (we send)
	kind      linkKind
	address   string // entity or node address
	replyTo   string // for a client receiver RPC link: its target address
	q         *queue
	mgmtQueue *queue // the entity a $management link belongs to

	// session receivers
	sessionID    string
	sessionBound bool
	// describedFilter: the client sent its session filter as a described
	// value, and gets the session ID back in the same form.
	describedFilter bool
	pendingAccept   bool
	acceptBy        time.Time
	attachFields    []any // the attach reply, held until a session is found

	// client receivers (we send)
	peekLock    bool // rcv-settle-mode second: deliveries are locked, not deleted
	credit      uint32
	deliveryCnt uint32
	pendingRPC  [][]byte // responses waiting for credit

	// client senders (we receive)
	clientDeliveryCnt uint32
	creditLeft        uint32
	partial           []byte
	partialFirst      perf
	inPartial         bool

	detached bool
}

// attachReply builds our attach for l. Its role is the opposite of the
// client's.
func attachReply(p perf, l *link, source, target any, props *Map, maxMessageSize uint64) []any {
	snd, _ := p.ubyte(3)
	rcv, _ := p.ubyte(4)
	var propsV any
	if props != nil {
		propsV = props
	}
	return []any{l.name, l.handle, !l.clientRx, snd, rcv, source, target, nil, nil, uint32(0), maxMessageSize, nil, nil, propsV}
}

func (ss *session) attach(p perf) error {
	s := ss.c.s
	name := p.str(0)
	handle, _ := p.u32(1)
	clientRx := p.boolean(2)
	l := &link{sess: ss, name: name, handle: handle, clientRx: clientRx}
	src, _ := p.described(5)
	tgt, _ := p.described(6)
	if clientRx {
		l.address = src.str(0)
		l.replyTo = tgt.str(0)
		rcv, _ := p.ubyte(4)
		l.peekLock = rcv == 1
	} else {
		l.address = tgt.str(0)
	}
	ss.links[handle] = l
	s.events.add(Event{Kind: EventLinkAttached, Conn: ss.c.id, Link: name, Entity: l.address})

	refuse := func(condition, description string) error {
		var source, target any = p.field(5), nil
		if clientRx {
			source, target = nil, p.field(6)
		}
		ss.c.send(ss.channel, described(codeAttach, attachReply(p, l, source, target, nil, 0)...), nil)
		ss.c.send(ss.channel, described(codeDetach, handle, true, amqpError(condition, description)), nil)
		delete(ss.links, handle)
		l.detached = true
		return nil
	}

	switch {
	case l.address == "$cbs":
		l.kind = kindCBS
	case strings.HasSuffix(strings.ToLower(l.address), "/$management"):
		l.kind = kindManagement
		l.mgmtQueue = s.entity(l.address[:len(l.address)-len("/$management")])
		if l.mgmtQueue == nil {
			return refuse("amqp:not-found", fmt.Sprintf("the messaging entity %q could not be found", l.address))
		}
	default:
		l.kind = kindEntity
		l.q = s.entity(l.address)
		if l.q == nil {
			return refuse("amqp:not-found", fmt.Sprintf("the messaging entity %q could not be found", l.address))
		}
	}
	if f := s.faults.linkError(l.address); f != "" {
		return refuse(f, "fault injected by the emulator")
	}

	if !clientRx { // the client sends; we receive
		ss.c.send(ss.channel, described(codeAttach, attachReply(p, l, p.field(5), p.field(6), nil, uint64(s.maxMessageSize(l)))...), nil)
		l.clientDeliveryCnt, _ = p.u32(9)
		if !s.faults.withholdCredit {
			l.grantCredit()
		}
		return nil
	}

	// The client receives.
	if l.kind != kindEntity {
		ss.c.send(ss.channel, described(codeAttach, attachReply(p, l, p.field(5), p.field(6), nil, 0)...), nil)
		return nil
	}
	// The session filter's value names the session, or is null for the next
	// available one. The Go and .NET SDKs send it described (with the
	// filter's descriptor); the JavaScript SDK sends the plain value. A
	// namespace takes both and answers in the same form.
	fv, hasFilter := src.mapField(7).Lookup("com.microsoft:session-filter")
	if d, ok := fv.(Described); ok {
		fv, l.describedFilter = d.Value, true
	}
	switch {
	case l.q.cfg.RequiresSession && !l.q.isDLQ() && !hasFilter:
		return refuse("amqp:not-allowed", fmt.Sprintf("it is not possible for an entity that requires sessions (%s) to create a non-sessionful message receiver", l.q.name))
	case hasFilter && (!l.q.cfg.RequiresSession || l.q.isDLQ()):
		return refuse("amqp:not-allowed", fmt.Sprintf("it is not possible for a non-sessionful entity (%s) to create a sessionful receiver", l.q.name))
	}
	if !hasFilter {
		ss.c.send(ss.channel, described(codeAttach, attachReply(p, l, p.field(5), p.field(6), nil, 0)...), nil)
		return nil
	}
	// A session receiver: a named session, or the next available one.
	l.sessionBound = true
	now := s.now()
	if id, ok := fv.(string); ok && id != "" {
		st := l.q.sessions[id]
		if st != nil && st.held(now) {
			return refuse("com.microsoft:session-cannot-be-locked", fmt.Sprintf("the requested session %q cannot be accepted: it is locked by another receiver", id))
		}
		l.attachFields = attachReply(p, l, p.field(5), p.field(6), nil, 0)
		s.bindSession(l, id, now)
		return nil
	}
	l.attachFields = attachReply(p, l, p.field(5), p.field(6), nil, 0)
	l.pendingAccept = true
	timeout := time.Minute
	if props := p.mapField(13); props != nil {
		// Any integer type: the Go SDK sends a uint, the JavaScript SDK
		// whatever its number encodes to.
		if ms, ok := asInt64(props.GetName("com.microsoft:timeout")); ok && ms >= 0 {
			timeout = time.Duration(ms) * time.Millisecond
		}
	}
	l.acceptBy = now.Add(timeout)
	return nil
}

// bindSession gives session id to l (the broker locks it) and sends l's
// attach reply with the session's ID and lock expiry.
func (s *Server) bindSession(l *link, id string, now time.Time) {
	st := s.lockSession(l.q, id, l, now)
	l.sessionID = id
	l.pendingAccept = false
	// Echo the source with the real session ID in its filter.
	reply := append([]any(nil), l.attachFields...)
	if src, ok := asPerf(reply[5]); ok {
		fields := append([]any(nil), src.fields...)
		for len(fields) < 8 {
			fields = append(fields, nil)
		}
		var v any = id
		if l.describedFilter {
			v = Described{Descriptor: uint64(sessionFilter), Value: id}
		}
		fm := &Map{}
		fm.Set(Symbol("com.microsoft:session-filter"), v)
		fields[7] = fm
		reply[5] = Described{Descriptor: uint64(codeSource), Value: fields}
	}
	props := &Map{}
	props.Set(Symbol("com.microsoft:locked-until-utc"), dotnetTicks(st.lockedUntil))
	reply[13] = props
	l.sess.c.send(l.sess.channel, described(codeAttach, reply...), nil)
	s.events.add(Event{Kind: EventLinkAttached, Conn: l.sess.c.id, Link: l.name, Entity: l.address, Detail: "session " + id})
}

// refuseAccept fails a session receiver that found no session in time.
func (l *link) refuseAccept() {
	ss := l.sess
	reply := append([]any(nil), l.attachFields...)
	reply[5] = nil // no source: the attach failed
	ss.c.send(ss.channel, described(codeAttach, reply...), nil)
	ss.c.send(ss.channel, described(codeDetach, l.handle, true, amqpError("com.microsoft:timeout",
		"no session was available before the timeout")), nil)
	delete(ss.links, l.handle)
	l.detached = true
}

// dropLink forgets a link: its unsettled deliveries can no longer be
// settled on it, and the broker releases what it held.
func (s *Server) dropLink(l *link) {
	if l.detached {
		return
	}
	l.detached = true
	for id, d := range l.sess.deliveries {
		if d.l == l {
			delete(l.sess.deliveries, id)
		}
	}
	s.linkGone(l)
	s.events.add(Event{Kind: EventLinkDetached, Conn: l.sess.c.id, Link: l.name, Entity: l.address})
}

// maxMessageSize is what a client sender may send on l.
func (s *Server) maxMessageSize(l *link) int {
	if l.q != nil {
		return l.q.cfg.MaxMessageSizeBytes
	}
	return 1 << 20
}

// grantCredit tops a client sender's credit up to linkCredit.
func (l *link) grantCredit() {
	l.creditLeft = linkCredit
	l.sess.sendFlow(l, l.clientDeliveryCnt, linkCredit, false)
}

// canSend reports whether l may take another delivery now.
func (l *link) canSend() bool {
	return !l.detached && l.credit > 0 && l.sess.remoteWindow > 0
}

// transmit sends one message on a client receiver link. An unsettled
// delivery is remembered until the client settles it.
func (l *link) transmit(d *delivery, tag []byte, settled bool, payload []byte) {
	ss := l.sess
	id := ss.nextDelivery
	ss.nextDelivery++
	if settled {
		tag = binary.BigEndian.AppendUint64(nil, uint64(id))
	}
	ss.sendTransfer(l, id, tag, settled, payload)
	l.credit--
	l.deliveryCnt++
	if !settled {
		ss.deliveries[id] = d
	}
}

// sendRPC sends an RPC response on a client receiver link, or holds it until
// the link has credit.
func (l *link) sendRPC(payload []byte) {
	l.pendingRPC = append(l.pendingRPC, payload)
	l.flushRPC()
}

func (l *link) flushRPC() {
	for len(l.pendingRPC) > 0 && l.credit > 0 && !l.detached {
		l.transmit(nil, nil, true, l.pendingRPC[0])
		l.pendingRPC = l.pendingRPC[1:]
	}
}
