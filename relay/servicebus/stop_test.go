package servicebus_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hookbridge/hookbridge/internal/metrictest"
	"github.com/hookbridge/hookbridge/internal/sbemu"
	"github.com/hookbridge/hookbridge/internal/testlog"
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

// TestStoppingPoolDeadLettersALastDeliveryItHeld: a message the session
// pool received on the last delivery the queue allows, and never handed to
// a worker, would be dead-lettered by Service Bus, unseen, when given back
// as the pool stops. The pool dead-letters it itself, saying why, counts
// it and logs it with its event id.
func TestStoppingPoolDeadLettersALastDeliveryItHeld(t *testing.T) {
	t.Parallel()
	emu := emulator(t)
	name := "last-delivery"
	if err := emu.CreateQueue(sbemu.QueueConfig{Name: name, LockDuration: 30 * time.Second, MaxDeliveryCount: 1, RequiresSession: true}); err != nil {
		t.Fatal(err)
	}
	var logs testlog.Buffer
	sessions := true
	q, err := servicebus.Open(context.Background(), servicebus.Config{Queue: name, ConnectionString: emu.ConnectionString(),
		Sessions: &sessions, LockDuration: 30 * time.Second, MaxDeliveryCount: 1}, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	reg := prometheus.NewRegistry()
	reg.MustRegister(q.Collector())
	if err := q.SendBatch(tctx(t), []relay.Message{event(t, "e1", "call-1")}); err != nil {
		t.Fatal(err)
	}
	stop := testrun.Start(t, q.Run)
	waitLocked(t, emu, name, 1) // the pool holds e1, delivery 1 of 1; nobody receives
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	dls, err := q.ListDeadLetters(tctx(t), 0, 10)
	if err != nil || len(dls) != 1 || dls[0].Reason != relay.ReasonMaxDelivery || !strings.Contains(dls[0].Description, "never handed to a worker") {
		t.Fatalf("dead letters %+v (%v), want e1 dead-lettered with a description saying it was never delivered", dls, err)
	}
	if n := metrictest.Value(t, reg, "hookbridge_servicebus_dead_lettered_unsent_total", "reason", relay.ReasonMaxDelivery); n != 1 {
		t.Errorf("hookbridge_servicebus_dead_lettered_unsent_total = %v, want 1", n)
	}
	if s := logs.String(); !strings.Contains(s, "event_id=e1") || !strings.Contains(s, "last allowed delivery") {
		t.Errorf("the dead-lettering is not logged with its event id:\n%s", s)
	}
}
