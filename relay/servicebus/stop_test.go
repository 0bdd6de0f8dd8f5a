package servicebus_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/hookbridge/hookbridge/internal/sbemu"
	"github.com/hookbridge/hookbridge/internal/testrun"
	"github.com/hookbridge/hookbridge/relay"
	"github.com/hookbridge/hookbridge/relay/relaytest"
	"github.com/hookbridge/hookbridge/relay/servicebus"
)

// openSecond opens another Queue on the same emulated queue, as a second
// worker process would, and runs it.
func openSecond(t *testing.T, emu *sbemu.Server, name string, lock time.Duration) *servicebus.Queue {
	t.Helper()
	q, err := servicebus.Open(context.Background(), servicebus.Config{Queue: name, ConnectionString: emu.ConnectionString(),
		SessionIdle: 200 * time.Millisecond, LockDuration: lock}, nil)
	if err != nil {
		t.Fatal(err)
	}
	runQueue(t, q)
	return q
}

// receiveIDs receives n messages from q, completing each, and returns their
// IDs in the order they came.
func receiveIDs(t *testing.T, q *servicebus.Queue, n int) []string {
	t.Helper()
	var ids []string
	for len(ids) < n {
		msgs, err := q.Receive(tctx(t), 1)
		if err != nil {
			t.Fatalf("after %v: %v", ids, err)
		}
		for _, m := range msgs {
			ids = append(ids, fmt.Sprintf("%s#%d", m.ID, m.DeliveryCount))
			if err := q.Complete(tctx(t), m); err != nil {
				t.Fatal(err)
			}
		}
	}
	return ids
}

// TestStoppingPoolGivesBackInOrder stops a worker's queue while it holds a
// call's first event, and a second worker must get the call's events in
// order, at once: neither the message received but not yet handed out nor
// the one held for a retry delay may stay locked while its session passes
// to the other worker (which would deliver the later events first and this
// one a lock duration later).
func TestStoppingPoolGivesBackInOrder(t *testing.T) {
	t.Parallel()
	const lock = 30 * time.Second // far longer than the test may wait
	for _, held := range []string{"received, not handed out", "held for a retry delay"} {
		t.Run(held, func(t *testing.T) {
			t.Parallel()
			emu := emulator(t)
			q1, name := openEmulatedIdle(t, emu, relaytest.Settings{LockDuration: lock, MaxDeliveryCount: 10, DuplicateWindow: time.Minute}, true)
			if err := q1.SendBatch(tctx(t), []relay.Message{event(t, "e1", "call-1"), event(t, "e2", "call-1"), event(t, "e3", "call-1")}); err != nil {
				t.Fatal(err)
			}
			stop := testrun.Start(t, q1.Run)
			abandoned := make(chan error, 1)
			if held == "received, not handed out" {
				// The pool takes the session's head and waits for a Receive
				// that never comes.
				waitLocked(t, emu, name, 1)
			} else {
				msgs, err := q1.Receive(tctx(t), 1)
				if err != nil || msgs[0].ID != "e1" {
					t.Fatalf("receive: %v %v", msgs, err)
				}
				go func() { abandoned <- q1.Abandon(context.Background(), msgs[0], time.Hour) }()
				time.Sleep(200 * time.Millisecond) // the hold has begun
			}
			if err := stop(); err != nil {
				t.Fatalf("Run: %v", err)
			}
			if held == "held for a retry delay" {
				select {
				case err := <-abandoned:
					if err != nil {
						t.Fatalf("Abandon cut short by the stop: %v, want nil (abandoned at once)", err)
					}
				case <-time.After(10 * time.Second):
					t.Fatal("Abandon still holding after the queue stopped")
				}
			}
			q2 := openSecond(t, emu, name, lock)
			start := time.Now()
			got := receiveIDs(t, q2, 3)
			if got[0] != "e1#2" || got[1] != "e2#1" || got[2] != "e3#1" {
				t.Errorf("the next worker got %v, want [e1#2 e2#1 e3#1]: the call's head first, given back once", got)
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("the next worker waited %v: the head stayed locked", d)
			}
		})
	}
}

func waitLocked(t *testing.T, emu *sbemu.Server, name string, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := emu.Stats(name)
		if err != nil {
			t.Fatal(err)
		}
		if st.Locked >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d messages locked, want %d", st.Locked, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRunLifecycle: Run runs once, stops on its context and on Close, and a
// stopped queue's Receive says so.
func TestRunLifecycle(t *testing.T) {
	t.Parallel()
	emu := emulator(t)
	q, _ := openEmulatedIdle(t, emu, settings, true)
	stop := testrun.Start(t, q.Run)
	time.Sleep(100 * time.Millisecond)
	if err := q.Run(context.Background()); err == nil {
		t.Error("a second Run was accepted")
	}
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if _, err := q.Receive(tctx(t), 1); !errors.Is(err, relay.ErrClosed) {
		t.Errorf("Receive after Run stopped: %v, want ErrClosed", err)
	}
	q2, _ := openEmulatedIdle(t, emu, settings, true)
	stop2 := testrun.Start(t, q2.Run)
	time.Sleep(100 * time.Millisecond)
	q2.Close()
	if err := stop2(); err != nil {
		t.Errorf("Run after Close: %v", err)
	}
	if err := q2.Run(context.Background()); !errors.Is(err, relay.ErrClosed) {
		t.Errorf("Run on a closed queue: %v, want ErrClosed", err)
	}
	if err := q2.Ready(context.Background()); !errors.Is(err, relay.ErrClosed) {
		t.Errorf("Ready on a closed queue: %v, want ErrClosed", err)
	}
}

// TestReadyReportsFailingAccepts: while sessions cannot be accepted for
// longer than UnreadyAfter the queue is unready, and ready again once an
// accept gets through.
func TestReadyReportsFailingAccepts(t *testing.T) {
	t.Parallel()
	emu := emulator(t)
	name := "ready-q"
	if err := emu.CreateQueue(sbemu.QueueConfig{Name: name, RequiresSession: true}); err != nil {
		t.Fatal(err)
	}
	emu.FailAttach(name, "amqp:not-allowed")
	q, err := servicebus.Open(context.Background(), servicebus.Config{Queue: name, ConnectionString: emu.ConnectionString(),
		UnreadyAfter: 300 * time.Millisecond, MaxRetries: 1, RetryDelay: 10 * time.Millisecond}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Ready(tctx(t)); err != nil {
		t.Errorf("Ready before any accept: %v", err)
	}
	runQueue(t, q)
	deadline := time.Now().Add(15 * time.Second)
	for q.Ready(tctx(t)) == nil {
		if time.Now().After(deadline) {
			t.Fatal("still ready with every session accept failing")
		}
		time.Sleep(50 * time.Millisecond)
	}
	err = q.Ready(tctx(t))
	if !errors.Is(err, relay.ErrUnavailable) {
		t.Errorf("Ready: %v, want ErrUnavailable", err)
	}
	t.Logf("unready: %v", err)
	emu.FailAttach(name, "")
	// A session with a message is accepted at once.
	if err := q.SendBatch(tctx(t), []relay.Message{event(t, "r1", "call-1")}); err != nil {
		t.Fatal(err)
	}
	for q.Ready(tctx(t)) != nil {
		if time.Now().After(deadline.Add(15 * time.Second)) {
			t.Fatalf("still unready after accepts recovered: %v", q.Ready(tctx(t)))
		}
		time.Sleep(50 * time.Millisecond)
	}
}
