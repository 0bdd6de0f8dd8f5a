package sbemu

import (
	"bufio"
	"bytes"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"iter"
	"net"
	"time"
)

// This file is the connection layer: protocol headers, SASL, open and
// close, the frame writer, and handing each frame to its session. It knows
// nothing of queues.

var (
	headerSASL = []byte{'A', 'M', 'Q', 'P', 3, 1, 0, 0}
	headerAMQP = []byte{'A', 'M', 'Q', 'P', 0, 1, 0, 0}
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
	// lost: the connection ended without the client closing it (its
	// process died, or the network or a fault cut it). What its links held
	// is then kept until the locks expire.
	lost bool

	writerDone chan struct{} // closed when the writer has stopped
}

// run serves one connection until it closes.
func (c *conn) run() {
	defer c.nc.Close()
	r := bufio.NewReaderSize(c.nc, 64<<10)
	if err := c.handshake(r); err != nil {
		c.s.log("conn %d: handshake: %v", c.id, err)
		return
	}
	c.writerDone = make(chan struct{})
	go c.writer()
	defer func() {
		c.s.mu.Lock()
		c.shutdown()
		c.s.mu.Unlock()
		// Let the writer flush what was queued (a close frame above all)
		// before the deferred Close; a client that stopped reading gets
		// a few seconds.
		select {
		case <-c.writerDone:
		case <-time.After(5 * time.Second):
		}
	}()
	for {
		c.nc.SetReadDeadline(time.Now().Add(2 * time.Minute))
		f, err := readFrame(r, maxFrameSize)
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				c.s.log("conn %d: read: %v", c.id, err)
			}
			c.s.mu.Lock()
			c.lost = !c.closed // gone without a close frame
			c.s.mu.Unlock()
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
		if err := c.sasl(r); err != nil {
			return err
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

// sasl runs the SASL exchange after its header. ANONYMOUS (and the CBS
// mechanism) always pass, as on Service Bus, where the token comes later
// through $cbs; PLAIN's user name and password must be the shared access
// key's name and the key when the server has one.
func (c *conn) sasl(r *bufio.Reader) error {
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
		// authzid NUL authcid NUL password
		parts := bytes.Split(f.body.bytes(1), []byte{0})
		if len(parts) != 3 ||
			subtle.ConstantTimeCompare(parts[1], []byte(c.s.cfg.SharedAccessKeyName))&
				subtle.ConstantTimeCompare(parts[2], []byte(c.s.cfg.SharedAccessKey)) != 1 {
			code = 1 // auth
		}
	}
	if _, err := c.nc.Write(encodeFrame(frameSASL, 0, described(codeSASLOutcome, code), nil)); err != nil {
		return err
	}
	if code != 0 {
		return errors.New("SASL PLAIN credentials refused")
	}
	return nil
}

// writer sends queued frames, and a heartbeat whenever the connection has
// been quiet for a while. When the connection shuts down it still writes
// what was queued before, so a close frame reaches the client.
func (c *conn) writer() {
	defer close(c.writerDone)
	t := time.NewTicker(10 * time.Second)
	defer t.Stop()
	write := func(b []byte) bool {
		if b == nil { // close marker: all before it is written
			c.nc.Close()
			return false
		}
		if _, err := c.nc.Write(b); err != nil {
			c.nc.Close()
			return false
		}
		return true
	}
	for {
		select {
		case b := <-c.out:
			if !write(b) {
				return
			}
		case <-t.C:
			if !write(heartbeat) {
				return
			}
		case <-c.done:
			for {
				select {
				case b := <-c.out:
					if !write(b) {
						return
					}
				default:
					return
				}
			}
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
	c.lost = true
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

// handle acts on one frame from the client.
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

// begin starts a session on channel.
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

// links yields the attached links of every session of the connection.
func (c *conn) links() iter.Seq[*link] {
	return func(yield func(*link) bool) {
		for _, ss := range c.sessions {
			for _, l := range ss.links {
				if !yield(l) {
					return
				}
			}
		}
	}
}

// linkByName finds an attached link of this connection by name (requests
// to $management name the receiver they act for in associated-link-name).
func (c *conn) linkByName(name string) *link {
	for l := range c.links() {
		if l.name == name {
			return l
		}
	}
	return nil
}
