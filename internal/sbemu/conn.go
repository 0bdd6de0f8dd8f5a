package sbemu

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/Azure/go-amqp"
)

var (
	headerSASL = []byte{'A', 'M', 'Q', 'P', 3, 1, 0, 0}
	headerAMQP = []byte{'A', 'M', 'Q', 'P', 0, 1, 0, 0}
)

const (
	sessionWindow = 5000
	linkCredit    = 1000
	// sessionFilter is the descriptor of Service Bus's session filter.
	sessionFilter = 0x00000137000000C
)

// conn is one client connection. Its state is guarded by the server's
// mutex; frames go out through a writer goroutine.
type conn struct {
	s        *Server
	id       int
	nc       net.Conn
	out      chan []byte
	done     chan struct{}
	peerMax  uint32
	sessions map[uint16]*session
	closed   bool
}

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
	sessionID     string
	sessionBound  bool
	pendingAccept bool
	acceptBy      time.Time
	attachFields  []any // the attach reply, held until a session is found

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

// run serves one connection until it closes.
func (c *conn) run() {
	defer c.nc.Close()
	r := bufio.NewReaderSize(c.nc, 64<<10)
	if err := c.handshake(r); err != nil {
		c.s.log("conn %d: handshake: %v", c.id, err)
		return
	}
	go c.writer()
	defer func() {
		c.s.mu.Lock()
		c.shutdown()
		c.s.mu.Unlock()
	}()
	for {
		c.nc.SetReadDeadline(time.Now().Add(2 * time.Minute))
		f, err := readFrame(r, maxFrameSize)
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				c.s.log("conn %d: read: %v", c.id, err)
			}
			return
		}
		if f.empty {
			continue
		}
		c.s.mu.Lock()
		err = c.handle(f)
		if err == nil {
			c.s.dispatch()
		}
		closed := c.closed
		c.s.mu.Unlock()
		if err != nil {
			c.s.log("conn %d: %v", c.id, err)
			c.s.mu.Lock()
			c.closeWith(amqpError("amqp:internal-error", err.Error()))
			c.s.mu.Unlock()
			return
		}
		if closed {
			return
		}
	}
}

// handshake runs the protocol headers, SASL and open.
func (c *conn) handshake(r *bufio.Reader) error {
	c.nc.SetDeadline(time.Now().Add(30 * time.Second))
	defer c.nc.SetDeadline(time.Time{})
	hdr := make([]byte, 8)
	if _, err := io.ReadFull(r, hdr); err != nil {
		return err
	}
	if bytes.Equal(hdr, headerSASL) {
		if _, err := c.nc.Write(headerSASL); err != nil {
			return err
		}
		mechs := described(codeSASLMechanisms, Array{Symbol("ANONYMOUS"), Symbol("PLAIN"), Symbol("MSSBCBS")})
		if _, err := c.nc.Write(encodeFrame(frameSASL, 0, mechs, nil)); err != nil {
			return err
		}
		f, err := readFrame(r, maxFrameSize)
		if err != nil {
			return err
		}
		if f.kind != frameSASL || f.body.code != codeSASLInit {
			return fmt.Errorf("expected sasl-init, got 0x%x", f.body.code)
		}
		code := uint8(0)
		if mech := f.body.str(0); mech == "PLAIN" && c.s.cfg.SharedAccessKey != "" {
			parts := bytes.Split(f.body.bytes(1), []byte{0})
			if len(parts) != 3 || string(parts[2]) != c.s.cfg.SharedAccessKey {
				code = 1 // auth
			}
		}
		if _, err := c.nc.Write(encodeFrame(frameSASL, 0, described(codeSASLOutcome, code), nil)); err != nil {
			return err
		}
		if code != 0 {
			return errors.New("SASL PLAIN credentials refused")
		}
		if _, err := io.ReadFull(r, hdr); err != nil {
			return err
		}
	}
	if !bytes.Equal(hdr, headerAMQP) {
		c.nc.Write(headerSASL)
		return fmt.Errorf("unsupported protocol header % x", hdr)
	}
	if _, err := c.nc.Write(headerAMQP); err != nil {
		return err
	}
	f, err := readFrame(r, maxFrameSize)
	if err != nil {
		return err
	}
	if f.body.code != codeOpen {
		return fmt.Errorf("expected open, got 0x%x", f.body.code)
	}
	c.peerMax = maxFrameSize
	if v, ok := f.body.u32(2); ok && v < c.peerMax {
		c.peerMax = max(v, 512)
	}
	open := described(codeOpen, "sbemu-"+c.s.cfg.Namespace, nil, uint32(maxFrameSize), uint16(65535), uint32(120000))
	_, err = c.nc.Write(encodeFrame(frameAMQP, 0, open, nil))
	c.s.events.add(Event{Kind: EventConnOpened, Conn: c.id})
	return err
}

// writer sends queued frames, and a heartbeat whenever the connection has
// been quiet for a while.
func (c *conn) writer() {
	t := time.NewTicker(10 * time.Second)
	defer t.Stop()
	for {
		select {
		case b, ok := <-c.out:
			if !ok {
				return
			}
			if b == nil { // close marker: flush done
				c.nc.Close()
				return
			}
			if _, err := c.nc.Write(b); err != nil {
				c.nc.Close()
				return
			}
		case <-t.C:
			if _, err := c.nc.Write(heartbeat); err != nil {
				c.nc.Close()
				return
			}
		case <-c.done:
			return
		}
	}
}

// send queues a frame. A client that stops reading is disconnected rather
// than allowed to block the server.
func (c *conn) send(channel uint16, body Described, payload []byte) {
	if c.closed {
		return
	}
	select {
	case c.out <- encodeFrame(frameAMQP, channel, body, payload):
	default:
		c.s.log("conn %d: client not reading; closing", c.id)
		c.closeNow()
	}
}

// closeWith sends close with err and closes the connection.
func (c *conn) closeWith(err Described) {
	if c.closed {
		return
	}
	c.send(0, described(codeClose, err), nil)
	c.closed = true
	select {
	case c.out <- nil:
	default:
		c.nc.Close()
	}
	c.shutdown()
}

// closeNow drops the TCP connection without a close frame.
func (c *conn) closeNow() {
	c.closed = true
	c.nc.Close()
	c.shutdown()
}

// shutdown releases everything the connection held (idempotent).
func (c *conn) shutdown() {
	if c.sessions == nil {
		return
	}
	for _, ss := range c.sessions {
		ss.end()
	}
	c.sessions = nil
	c.closed = true
	delete(c.s.conns, c)
	select {
	case <-c.done:
	default:
		close(c.done)
	}
	c.s.events.add(Event{Kind: EventConnClosed, Conn: c.id})
}

func (c *conn) handle(f frame) error {
	if f.kind != frameAMQP {
		return errors.New("unexpected SASL frame")
	}
	p := f.body
	if p.code == codeClose {
		c.send(0, described(codeClose), nil)
		c.closed = true
		select {
		case c.out <- nil:
		default:
		}
		c.shutdown()
		return nil
	}
	if p.code == codeBegin {
		return c.begin(f.channel, p)
	}
	ss := c.sessions[f.channel]
	if ss == nil {
		return fmt.Errorf("frame 0x%x on channel %d without a session", p.code, f.channel)
	}
	switch p.code {
	case codeAttach:
		return ss.attach(p)
	case codeFlow:
		return ss.flow(p)
	case codeTransfer:
		return ss.transfer(p, f.payload)
	case codeDisposition:
		return ss.disposition(p)
	case codeDetach:
		return ss.detach(p)
	case codeEnd:
		c.send(ss.channel, described(codeEnd), nil)
		ss.end()
		delete(c.sessions, ss.channel)
		return nil
	default:
		return fmt.Errorf("unexpected performative 0x%x", p.code)
	}
}

func (c *conn) begin(channel uint16, p perf) error {
	if _, ok := c.sessions[channel]; ok {
		return fmt.Errorf("channel %d already has a session", channel)
	}
	nextOut, _ := p.u32(1)
	window, _ := p.u32(2)
	ss := &session{c: c, channel: channel, nextIncomingID: nextOut, incomingLeft: sessionWindow,
		nextOutgoingID: 1, remoteWindow: window, links: map[uint32]*link{}, deliveries: map[uint32]*delivery{}}
	c.sessions[channel] = ss
	c.send(channel, described(codeBegin, uint16(channel), uint32(1), uint32(sessionWindow), uint32(sessionWindow), uint32(1<<20)), nil)
	return nil
}

// end releases a session's links and deliveries. Locks stay until they
// expire, as in Service Bus.
func (ss *session) end() {
	for _, l := range ss.links {
		ss.c.s.dropLink(l)
	}
	ss.links = map[uint32]*link{}
	ss.deliveries = map[uint32]*delivery{}
}

// dropLink forgets a link: a session it held is released.
func (s *Server) dropLink(l *link) {
	if l.detached {
		return
	}
	l.detached = true
	// Its unsettled deliveries can no longer be settled on a link (the
	// SDK falls back to $management); their locks stay until they expire.
	for id, d := range l.sess.deliveries {
		if d.l == l {
			delete(l.sess.deliveries, id)
		}
	}
	if l.q != nil && l.sessionBound {
		if ss, ok := l.q.sessions[l.sessionID]; ok && ss.holder == l {
			ss.holder = nil
		}
	}
	s.events.add(Event{Kind: EventLinkDetached, Conn: l.sess.c.id, Link: l.name, Entity: l.address})
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
	filter := src.mapField(7)
	var fv any
	hasFilter := false
	if filter != nil {
		if d, ok := filter.GetName("com.microsoft:session-filter").(Described); ok {
			hasFilter, fv = true, d.Value
		}
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
		if ms, ok := props.GetName("com.microsoft:timeout").(uint32); ok {
			timeout = time.Duration(ms) * time.Millisecond
		}
	}
	l.acceptBy = now.Add(timeout)
	return nil
}

// bindSession gives session id to l and sends l's attach reply with the
// session's ID and lock expiry.
func (s *Server) bindSession(l *link, id string, now time.Time) {
	st := l.q.sessions[id]
	if st == nil {
		st = &sessionState{id: id}
		l.q.sessions[id] = st
	}
	st.holder = l
	st.lockedUntil = now.Add(l.q.cfg.LockDuration)
	l.sessionID = id
	l.pendingAccept = false
	// Echo the source with the real session ID in its filter.
	reply := append([]any(nil), l.attachFields...)
	if src, ok := asPerf(reply[5]); ok {
		fields := append([]any(nil), src.fields...)
		for len(fields) < 8 {
			fields = append(fields, nil)
		}
		fm := &Map{}
		fm.Set(Symbol("com.microsoft:session-filter"), Described{Descriptor: uint64(sessionFilter), Value: id})
		fields[7] = fm
		reply[5] = Described{Descriptor: uint64(codeSource), Value: fields}
	}
	props := &Map{}
	props.Set(Symbol("com.microsoft:locked-until-utc"), dotnetTicks(st.lockedUntil))
	reply[13] = props
	l.sess.c.send(l.sess.channel, described(codeAttach, reply...), nil)
	s.events.add(Event{Kind: EventLinkAttached, Conn: l.sess.c.id, Link: l.name, Entity: l.address, Detail: "session " + id})
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
	ss := l.sess
	ss.c.send(ss.channel, described(codeFlow, ss.nextIncomingID, ss.incomingLeft, ss.nextOutgoingID, uint32(sessionWindow),
		l.handle, l.clientDeliveryCnt, uint32(linkCredit)), nil)
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
			ss.c.send(ss.channel, described(codeFlow, ss.nextIncomingID, ss.incomingLeft, ss.nextOutgoingID, uint32(sessionWindow),
				l.handle, l.deliveryCnt, uint32(0), nil, true), nil)
		}
		l.flushRPC()
	}
	if p.boolean(9) { // echo
		ss.c.send(ss.channel, described(codeFlow, ss.nextIncomingID, ss.incomingLeft, ss.nextOutgoingID, uint32(sessionWindow),
			l.handle, l.deliveryCnt, l.credit), nil)
	}
	return nil
}

// transfer handles a transfer frame from a client sender.
func (ss *session) transfer(p perf, payload []byte) error {
	ss.nextIncomingID++
	ss.incomingLeft--
	if ss.incomingLeft < sessionWindow/2 {
		ss.incomingLeft = sessionWindow
		ss.c.send(ss.channel, described(codeFlow, ss.nextIncomingID, ss.incomingLeft, ss.nextOutgoingID, uint32(sessionWindow)), nil)
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
		state, drop = ss.c.s.receive(l, body, format)
		if drop {
			return nil
		}
	}
	if !settled {
		ss.c.send(ss.channel, described(codeDisposition, true, deliveryID, nil, true, state), nil)
	}
	return nil
}

// receive enqueues what a client sender sent: one message, or a batch. It
// returns the outcome, or drop when a fault cut the connection instead.
func (s *Server) receive(l *link, body []byte, format uint32) (state Described, drop bool) {
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
			l.sess.c.closeNow()
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

// settle applies a client's outcome to a delivery and returns the outcome
// to confirm: the same, or rejected with message-lock-lost.
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
		return described(codeRejected, amqpError("com.microsoft:message-lock-lost",
			"the lock supplied is invalid: either the lock expired, or the message has already been removed from the queue"))
	}
	return s.applyOutcome(q, m, state, now)
}

// applyOutcome settles a locked message by a delivery state.
func (s *Server) applyOutcome(q *queue, m *stored, state perf, now time.Time) Described {
	id := messageID(m.msg)
	switch state.code {
	case codeAccepted:
		q.remove(m)
		s.events.add(Event{Kind: EventSettled, Entity: q.name, MessageID: id, Sequence: m.seq, Detail: "completed"})
		return described(codeAccepted)
	case codeRejected:
		reason, desc := "", ""
		if e, ok := state.described(0); ok {
			if info := e.mapField(2); info != nil {
				reason, _ = info.GetName("DeadLetterReason").(string)
				desc, _ = info.GetName("DeadLetterErrorDescription").(string)
			}
		}
		s.deadLetter(q, m, reason, desc, now)
		// Rejected without an error: the SDK reads an error as a failure.
		return described(codeRejected)
	case codeModified:
		if state.boolean(1) { // undeliverable-here: defer
			m.unlock()
			m.deferred = true
			s.events.add(Event{Kind: EventSettled, Entity: q.name, MessageID: id, Sequence: m.seq, Detail: "deferred"})
			return described(codeModified, nil, true)
		}
		s.events.add(Event{Kind: EventSettled, Entity: q.name, MessageID: id, Sequence: m.seq, Detail: "abandoned"})
		s.release(q, m, true, now)
		return described(codeModified)
	case codeReleased:
		s.release(q, m, false, now)
		return described(codeReleased)
	default:
		return described(codeRejected, amqpError("amqp:not-implemented", fmt.Sprintf("delivery state 0x%x", state.code)))
	}
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

// deliverTo hands l as many messages as its credit and the session window
// allow.
func (s *Server) deliverTo(l *link) {
	if l.detached || l.pendingAccept || l.kind != kindEntity || !l.clientRx {
		return
	}
	ss := l.sess
	now := s.now()
	for l.credit > 0 && ss.remoteWindow > 0 {
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
		settled := !l.peekLock
		var token UUID
		if !settled {
			token = newLockToken()
			m.lockToken, m.holder = token, l
			m.lockedUntil = now.Add(l.q.cfg.LockDuration)
			if l.sessionBound {
				m.lockedUntil = l.q.sessions[l.sessionID].lockedUntil
			}
		}
		payload, err := deliverable(l.q, m, !settled, 0)
		if err != nil {
			s.log("encode message %d: %v", m.seq, err)
			return
		}
		if settled {
			l.q.remove(m)
		}
		id := ss.nextDelivery
		ss.nextDelivery++
		tag := dotnetOrder(token)
		if settled {
			tag = binary.BigEndian.AppendUint64(nil, uint64(id))
		}
		ss.sendTransfer(l, id, tag, settled, payload)
		l.credit--
		l.deliveryCnt++
		if !settled {
			ss.deliveries[id] = &delivery{l: l, q: l.q, m: m, token: token}
		}
		s.events.add(Event{Kind: EventDelivered, Conn: ss.c.id, Link: l.name, Entity: l.q.name, MessageID: messageID(m.msg), Sequence: m.seq})
	}
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

// sendRPC sends an RPC response on a client receiver link, or holds it until
// the link has credit.
func (l *link) sendRPC(payload []byte) {
	l.pendingRPC = append(l.pendingRPC, payload)
	l.flushRPC()
}

func (l *link) flushRPC() {
	for len(l.pendingRPC) > 0 && l.credit > 0 && !l.detached {
		ss := l.sess
		id := ss.nextDelivery
		ss.nextDelivery++
		ss.sendTransfer(l, id, binary.BigEndian.AppendUint64(nil, uint64(id)), true, l.pendingRPC[0])
		l.pendingRPC = l.pendingRPC[1:]
		l.credit--
		l.deliveryCnt++
	}
}
