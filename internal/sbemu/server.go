package sbemu

import (
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"
)

// Config configures the emulator.
type Config struct {
	// Namespace names the emulated namespace (connection strings need a
	// name; any will do). Default "sbemulatorns".
	Namespace string
	// Queues are created at start.
	Queues []QueueConfig
	// SharedAccessKeyName and SharedAccessKey: when the key is set, CBS
	// tokens and SASL PLAIN credentials are checked against it; otherwise
	// any token is accepted. ConnectionString uses them either way.
	SharedAccessKeyName string
	SharedAccessKey     string
	// Logger receives protocol errors. Default: discard.
	Logger *slog.Logger
}

// Server is an AMQP 1.0 server speaking enough of the Service Bus dialect
// for the azservicebus SDK: CBS, senders and batches, peek-lock and
// receive-and-delete receivers, settlement, sessions, the dead-letter
// sub-queue, and the $management operations for locks, sessions, peeking,
// deferral and scheduling. It is a test server: messages live in memory.
type Server struct {
	cfg Config

	mu     sync.Mutex
	queues map[string]*queue // by lower-case name
	conns  map[*conn]bool
	nextID int
	faults faults
	events eventLog

	ln      net.Listener
	done    chan struct{}
	wg      sync.WaitGroup
	closeMu sync.Once
	clock   func() time.Time
}

// New returns a server with cfg's queues. Start or Serve runs it.
func New(cfg Config) (*Server, error) {
	if cfg.Namespace == "" {
		cfg.Namespace = "sbemulatorns"
	}
	if cfg.SharedAccessKeyName == "" {
		cfg.SharedAccessKeyName = "RootManageSharedAccessKey"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, queues: map[string]*queue{}, conns: map[*conn]bool{}, done: make(chan struct{}), clock: time.Now}
	for _, q := range cfg.Queues {
		if err := s.CreateQueue(q); err != nil {
			return nil, err
		}
	}
	return s, nil
}

func (s *Server) now() time.Time { return s.clock() }

func (s *Server) log(format string, args ...any) {
	s.cfg.Logger.Debug(fmt.Sprintf(format, args...))
}

// CreateQueue adds a queue. Names are case-insensitive, as in Service Bus.
func (s *Server) CreateQueue(cfg QueueConfig) error {
	if cfg.Name == "" || strings.ContainsAny(cfg.Name, "$") {
		return fmt.Errorf("sbemu: invalid queue name %q", cfg.Name)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	key := strings.ToLower(cfg.Name)
	if _, ok := s.queues[key]; ok {
		return fmt.Errorf("sbemu: queue %q exists", cfg.Name)
	}
	s.queues[key] = newQueue(cfg)
	return nil
}

// Start listens on addr (e.g. 127.0.0.1:0) and serves in the background.
func (s *Server) Start(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("sbemu: listen %s: %w", addr, err)
	}
	s.ln = ln
	s.wg.Add(2)
	go func() { defer s.wg.Done(); s.serve(ln) }()
	go func() { defer s.wg.Done(); s.tick() }()
	return nil
}

// Serve serves on ln until Close.
func (s *Server) Serve(ln net.Listener) error {
	s.ln = ln
	s.wg.Add(1)
	go func() { defer s.wg.Done(); s.tick() }()
	s.serve(ln)
	return nil
}

func (s *Server) serve(ln net.Listener) {
	for {
		nc, err := ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				s.log("accept: %v", err)
			}
			return
		}
		if s.refused(nc) {
			continue
		}
		s.mu.Lock()
		s.nextID++
		c := &conn{s: s, id: s.nextID, nc: nc, out: make(chan []byte, 16384), done: make(chan struct{}), sessions: map[uint16]*session{}}
		s.conns[c] = true
		s.mu.Unlock()
		s.wg.Add(1)
		go func() { defer s.wg.Done(); c.run() }()
	}
}

// Addr is the listening address.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// ConnectionString returns a connection string for the SDK, with
// UseDevelopmentEmulator=true (plain TCP, no TLS).
func (s *Server) ConnectionString() string {
	key := s.cfg.SharedAccessKey
	if key == "" {
		key = "SAS_KEY_VALUE"
	}
	return fmt.Sprintf("Endpoint=sb://%s;SharedAccessKeyName=%s;SharedAccessKey=%s;UseDevelopmentEmulator=true",
		s.Addr(), s.cfg.SharedAccessKeyName, key)
}

// Close stops listening, closes every connection and waits for the
// server's goroutines.
func (s *Server) Close() error {
	s.closeMu.Do(func() {
		close(s.done)
		if s.ln != nil {
			s.ln.Close()
		}
		s.mu.Lock()
		for c := range s.conns {
			c.closeNow()
		}
		s.mu.Unlock()
	})
	s.wg.Wait()
	return nil
}

// tick runs timers: lock, session and message expiry, scheduled messages,
// and session accepts that wait.
func (s *Server) tick() {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
		}
		s.mu.Lock()
		now := s.now()
		for _, q := range s.queues {
			s.expire(q, now)
			s.expire(q.dlq, now)
		}
		s.dispatch()
		s.mu.Unlock()
	}
}

// dispatch binds waiting session receivers and delivers to every receiver
// with credit (the caller holds mu).
func (s *Server) dispatch() {
	now := s.now()
	for l := range s.links() {
		if l.pendingAccept {
			if id := l.q.availableSession(now); id != "" {
				s.bindSession(l, id, now)
			} else if !now.Before(l.acceptBy) {
				l.refuseAccept()
				continue
			}
		}
		if l.clientRx && l.kind == kindEntity && l.credit > 0 {
			s.deliverTo(l)
		}
	}
}

// links yields the attached links of every connection (the caller holds
// mu).
func (s *Server) links() iter.Seq[*link] {
	return func(yield func(*link) bool) {
		for c := range s.conns {
			for l := range c.links() {
				if !yield(l) {
					return
				}
			}
		}
	}
}

// Events returns the event log so far.
func (s *Server) Events() []Event { return s.events.snapshot() }

// OpenConnections and OpenLinks count what is open now, for leak checks.
func (s *Server) OpenConnections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// OpenLinks counts attached links to entities (not CBS or management).
func (s *Server) OpenLinks() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for l := range s.links() {
		if l.kind == kindEntity {
			n++
		}
	}
	return n
}

// QueueStats describes a queue's content.
type QueueStats struct {
	Active, Locked, Deferred, Scheduled, DeadLettered int
}

// Stats returns the counts of queue name.
func (s *Server) Stats(name string) (QueueStats, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	q := s.entity(name)
	if q == nil || q.isDLQ() {
		return QueueStats{}, fmt.Errorf("sbemu: no queue %q", name)
	}
	now := s.now()
	var st QueueStats
	for _, m := range q.messages {
		switch {
		case m.deferred:
			st.Deferred++
		case now.Before(m.visible):
			st.Scheduled++
		case m.locked(now):
			st.Locked++
		default:
			st.Active++
		}
	}
	st.DeadLettered = len(q.dlq.messages)
	return st, nil
}
