package sbemu_test

import (
	"context"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"

	"github.com/hookbridge/hookbridge/internal/sbemu"
	"github.com/hookbridge/hookbridge/internal/sbemu/sbemutest"
)

// outageServer starts a server with queue q for one test.
func outageServer(t *testing.T) *sbemu.Server {
	t.Helper()
	return sbemutest.NewServer(t, sbemu.QueueConfig{Name: "q"}).Server
}

// outageSender opens a sender to q with the given SDK retries.
func outageSender(t *testing.T, s *sbemu.Server, retries int32, delay time.Duration) *azservicebus.Sender {
	t.Helper()
	c, err := azservicebus.NewClientFromConnectionString(s.ConnectionString(), &azservicebus.ClientOptions{
		RetryOptions: azservicebus.RetryOptions{MaxRetries: retries, RetryDelay: delay, MaxRetryDelay: 2 * delay},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	snd, err := c.NewSender("q", nil)
	if err != nil {
		t.Fatal(err)
	}
	return snd
}

// TestOutageFaults drives RefuseConnections, ThrottleSends and ClearFaults
// through the SDK: a send fails while each fault lasts, succeeds once it
// ends, and nothing a failed send carried is stored.
func TestOutageFaults(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		start func(s *sbemu.Server)
		end   func(s *sbemu.Server)
	}{
		{"refuse connections", func(s *sbemu.Server) { s.RefuseConnections(true) }, func(s *sbemu.Server) { s.RefuseConnections(false) }},
		{"throttle sends", func(s *sbemu.Server) { s.ThrottleSends(true) }, func(s *sbemu.Server) { s.ThrottleSends(false) }},
		{"clear faults", func(s *sbemu.Server) { s.RefuseConnections(true); s.ThrottleSends(true) }, func(s *sbemu.Server) { s.ClearFaults() }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := outageServer(t)
			snd := outageSender(t, s, 2, 50*time.Millisecond)
			send := func(id string) error {
				c, cancel := context.WithTimeout(context.Background(), 3*time.Second)
				defer cancel()
				return snd.SendMessage(c, &azservicebus.Message{MessageID: &id, Body: []byte(id)}, nil)
			}
			if err := send("before"); err != nil {
				t.Fatalf("send before the fault: %v", err)
			}
			tt.start(s)
			if err := send("during"); err == nil {
				t.Fatal("a send succeeded during the fault")
			}
			if n := s.OpenConnections(); tt.name == "refuse connections" && n != 0 {
				t.Errorf("%d connections open while refusing", n)
			}
			tt.end(s)
			if err := send("after"); err != nil {
				t.Fatalf("send after the fault ended: %v", err)
			}
			st, err := s.Stats("q")
			if err != nil {
				t.Fatal(err)
			}
			if st.Active != 2 {
				t.Errorf("queue holds %d messages, want 2 (before, after)", st.Active)
			}
			faults := 0
			for _, e := range s.Events() {
				if e.Kind == sbemu.EventFault {
					faults++
				}
			}
			if faults < 2 {
				t.Errorf("%d fault events logged, want the start and the end at least", faults)
			}
		})
	}
}

// TestThrottledSendIsServerBusy checks the condition a throttled send gets:
// the SDK retries com.microsoft:server-busy, so a send that outlasts the
// throttling succeeds.
func TestThrottledSendIsServerBusy(t *testing.T) {
	t.Parallel()
	s := outageServer(t)
	snd := outageSender(t, s, 20, 50*time.Millisecond)
	s.ThrottleSends(true)
	time.AfterFunc(300*time.Millisecond, func() { s.ThrottleSends(false) })
	id := "m"
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := snd.SendMessage(ctx, &azservicebus.Message{MessageID: &id, Body: []byte("x")}, nil); err != nil {
		t.Fatalf("send while throttled for 300ms was not retried to success: %v", err)
	}
}
