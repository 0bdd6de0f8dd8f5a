// Package sbemutest starts a Service Bus emulator for one test, the way
// net/http/httptest starts an HTTP server: on 127.0.0.1 and a free port,
// closed when the test ends.
//
//	srv := sbemutest.NewServer(t, sbemu.QueueConfig{Name: "q"})
//	client := srv.NewClient(t) // or azservicebus.NewClientFromConnectionString(srv.ConnectionString(), nil)
//
// With ExpectNoLeaks, the test also fails if a connection or an entity
// link is still open once every other cleanup has run (clients closed).
// DrainSession takes what one session of a queue holds, for checking what
// reached Service Bus and in which order.
package sbemutest

import (
	"context"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"

	"github.com/hookbridge/hookbridge/internal/sbemu"
)

// leakGrace is how long the leak check waits for clients' closes to reach
// the server.
const leakGrace = 3 * time.Second

// Server is a running emulator. Its embedded *sbemu.Server gives the
// connection string, the fault hooks, Stats and Events.
type Server struct {
	*sbemu.Server
	checkLeaks bool
}

// NewServer starts an emulator with queues and closes it at the end of the
// test.
func NewServer(t testing.TB, queues ...sbemu.QueueConfig) *Server {
	t.Helper()
	return NewServerConfig(t, sbemu.Config{Queues: queues})
}

// NewServerConfig starts an emulator with cfg (for a shared access key or a
// logger) and closes it at the end of the test.
func NewServerConfig(t testing.TB, cfg sbemu.Config) *Server {
	t.Helper()
	emu, err := sbemu.New(cfg)
	if err != nil {
		t.Fatalf("sbemutest: %v", err)
	}
	if err := emu.Start("127.0.0.1:0"); err != nil {
		t.Fatalf("sbemutest: %v", err)
	}
	s := &Server{Server: emu}
	// Registered first, so it runs last: after the cleanups that close the
	// test's clients.
	t.Cleanup(func() {
		if s.checkLeaks {
			s.requireNoLeaks(t)
		}
		emu.Close()
	})
	return s
}

// ExpectNoLeaks makes the test fail if, at its end, connections or entity
// links are still open.
func (s *Server) ExpectNoLeaks() { s.checkLeaks = true }

func (s *Server) requireNoLeaks(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(leakGrace)
	for s.OpenConnections() != 0 || s.OpenLinks() != 0 {
		if time.Now().After(deadline) {
			t.Errorf("sbemutest: %d connections and %d entity links still open at the end of the test: close every client, sender and receiver",
				s.OpenConnections(), s.OpenLinks())
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// NewClient returns an azservicebus client for the server with short
// retries (so a test waits seconds, not minutes, for a failure) and closes
// it at the end of the test.
func (s *Server) NewClient(t testing.TB) *azservicebus.Client {
	t.Helper()
	c, err := azservicebus.NewClientFromConnectionString(s.ConnectionString(), &azservicebus.ClientOptions{
		RetryOptions: azservicebus.RetryOptions{MaxRetries: 2, RetryDelay: 50 * time.Millisecond, MaxRetryDelay: time.Second},
	})
	if err != nil {
		t.Fatalf("sbemutest: client: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c.Close(ctx)
	})
	return c
}

// sessionIdle is how long DrainSession waits for a session's next message
// before it concludes the session is empty.
const sessionIdle = 500 * time.Millisecond

// DrainSession receives and deletes the messages of session key of queue on
// s, in order, until none has come for half a second, and returns them. It
// fails the test if the session cannot be accepted.
func DrainSession(t testing.TB, s *sbemu.Server, queue, key string) []*azservicebus.ReceivedMessage {
	t.Helper()
	c, err := azservicebus.NewClientFromConnectionString(s.ConnectionString(), nil)
	if err != nil {
		t.Fatalf("sbemutest: client: %v", err)
	}
	defer c.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := c.AcceptSessionForQueue(ctx, queue, key, &azservicebus.SessionReceiverOptions{ReceiveMode: azservicebus.ReceiveModeReceiveAndDelete})
	if err != nil {
		t.Fatalf("sbemutest: accept session %s of %s: %v", key, queue, err)
	}
	defer r.Close(context.Background())
	var out []*azservicebus.ReceivedMessage
	for {
		rctx, cancel := context.WithTimeout(ctx, sessionIdle)
		msgs, err := r.ReceiveMessages(rctx, 1000, nil)
		cancel()
		if err != nil || len(msgs) == 0 {
			return out
		}
		out = append(out, msgs...)
	}
}
