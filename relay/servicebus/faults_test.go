package servicebus_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hookbridge/hookbridge/consumer"
	"github.com/hookbridge/hookbridge/internal/sbemu"
	"github.com/hookbridge/hookbridge/internal/testrun"
	"github.com/hookbridge/hookbridge/relay"
	"github.com/hookbridge/hookbridge/relay/relaytest"
	"github.com/hookbridge/hookbridge/relay/servicebus"
	"github.com/hookbridge/hookbridge/schemas"
)

// drain receives and completes everything on q and returns the message
// IDs, with how often each was completed. A message whose lock a fault took
// is not counted: it comes again.
func drain(t *testing.T, q *servicebus.Queue) map[string]int {
	t.Helper()
	got := map[string]int{}
	idle := 700 * time.Millisecond
	for {
		ctx, cancel := context.WithTimeout(context.Background(), idle)
		msgs, err := q.Receive(ctx, 10)
		cancel()
		if err != nil {
			return got
		}
		for _, m := range msgs {
			err := q.Complete(context.Background(), m)
			switch {
			case errors.Is(err, relay.ErrLockLost):
				// Received before a fault took its lock (a forced detach
				// of the session's link): Service Bus delivers it again
				// once the lock expires, so wait for that.
				idle = settings.LockDuration + time.Second
			case err != nil:
				t.Fatalf("complete %s: %v", m.ID, err)
			default:
				got[m.ID]++
			}
		}
	}
}

// TestDroppedConnectionMidSend cuts the connection after a send's transfer,
// before its disposition, with and without the message stored. Publish
// through group commit must either fail (the sender gets a 503 and
// retries) or have the message queued; a retry of a stored message is
// dropped by duplicate detection.
func TestDroppedConnectionMidSend(t *testing.T) {
	t.Parallel()
	for _, stored := range []bool{true, false} {
		t.Run(fmt.Sprintf("stored=%v", stored), func(t *testing.T) {
			t.Parallel()
			emu := emulator(t)
			q, _ := openEmulated(t, emu, settings, true)
			b, err := relay.NewBatcher(q, relay.BatchConfig{Timeout: 10 * time.Second}, nil)
			if err != nil {
				t.Fatal(err)
			}
			go b.Run(context.Background())
			defer b.Close()
			msg := event(t, "evt-drop", "call-1")
			emu.DropConnectionOnNextSend(stored)
			acked := false
			for attempt := 0; attempt < 5 && !acked; attempt++ {
				err := b.Publish(tctx(t), []relay.Message{msg})
				switch {
				case err == nil:
					acked = true
				case errors.Is(err, relay.ErrUnavailable):
					t.Logf("attempt %d: %v (the sender would get 503 and retry)", attempt, err)
				default:
					t.Fatalf("attempt %d: unexpected %v", attempt, err)
				}
			}
			if !acked {
				t.Fatal("never acknowledged")
			}
			if got := drain(t, q); got["evt-drop"] != 1 {
				t.Errorf("queue holds %v, want evt-drop exactly once", got)
			}
			faulted := false
			for _, e := range emu.Events() {
				faulted = faulted || e.Kind == sbemu.EventFault
			}
			if !faulted {
				t.Error("the connection was never dropped")
			}
		})
	}
}

func TestServerBusyIsRetried(t *testing.T) {
	t.Parallel()
	emu := emulator(t)
	q, _ := openEmulatedIdle(t, emu, settings, true) // a sender, as the ingress uses it: no session pool
	emu.RejectSends(2, "com.microsoft:server-busy")
	if err := q.SendBatch(tctx(t), []relay.Message{event(t, "busy", "k")}); err != nil {
		t.Fatalf("send after two server-busy rejections: %v", err)
	}
	emu.RejectSends(1, "amqp:resource-limit-exceeded")
	if err := q.SendBatch(tctx(t), []relay.Message{event(t, "full", "k")}); !errors.Is(err, relay.ErrUnavailable) {
		t.Fatalf("quota exceeded: %v, want ErrUnavailable (503)", err)
	}
}

// A batch Service Bus refuses for its size (amqp:link:message-size-exceeded),
// though the SDK sized it to fit, is sent again one message at a time: only
// a message refused alone too is left out, named, as too large (413); the
// others arrive.
func TestBatchRefusedForItsSizeIsSplit(t *testing.T) {
	t.Parallel()
	emu := emulator(t)
	q, _ := openEmulated(t, emu, settings, true)
	msgs := []relay.Message{event(t, "s1", "k"), event(t, "s2", "k"), event(t, "s3", "k")}
	emu.RejectSends(1, "amqp:link:message-size-exceeded")
	if err := q.SendBatch(tctx(t), msgs); err != nil {
		t.Fatalf("send of a batch refused once for its size: %v, want it sent a message at a time", err)
	}
	// The batch, then the first message alone, refused.
	emu.RejectSends(2, "amqp:link:message-size-exceeded")
	more := []relay.Message{event(t, "s4", "k"), event(t, "s5", "k")}
	err := q.SendBatch(tctx(t), more)
	var notSent *relay.NotSentError
	if !errors.As(err, &notSent) || !errors.Is(err, relay.ErrMessageTooLarge) || !slices.Equal(notSent.IDs, []string{more[0].ID}) {
		t.Fatalf("send with its first message refused for its size: %v, want it alone named as too large", err)
	}
	got := drain(t, q)
	for _, m := range append(msgs, more[1]) {
		if got[m.ID] != 1 {
			t.Errorf("message %s received %d times, want once: %v", m.ID, got[m.ID], got)
		}
	}
	if got[more[0].ID] != 0 {
		t.Errorf("the message refused for its size arrived: %v", got)
	}
}

func TestRefusedCBSIsUnavailable(t *testing.T) {
	t.Parallel()
	emu := emulator(t)
	emu.SetCBS(401, 0)
	q, _ := openEmulatedIdle(t, emu, settings, true) // a sender, as the ingress uses it: no session pool
	err := q.SendBatch(tctx(t), []relay.Message{event(t, "x", "k")})
	if !errors.Is(err, relay.ErrUnavailable) {
		t.Fatalf("send with CBS refused: %v, want ErrUnavailable", err)
	}
}

func TestWithheldCreditFailsWithinDeadline(t *testing.T) {
	t.Parallel()
	emu := emulator(t)
	emu.WithholdCredit(true)
	q, _ := openEmulatedIdle(t, emu, settings, true) // a sender, as the ingress uses it: no session pool
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	start := time.Now()
	err := q.SendBatch(ctx, []relay.Message{event(t, "x", "k")})
	if err == nil || time.Since(start) > 5*time.Second {
		t.Fatalf("send without credit: %v after %v; want a failure near the deadline", err, time.Since(start))
	}
	emu.WithholdCredit(false)
	if err := q.SendBatch(tctx(t), []relay.Message{event(t, "y", "k")}); err != nil {
		t.Fatalf("after credit returned: %v", err)
	}
}

// TestLockLostMidDelivery expires every lock while the worker delivers: the
// delivery's lock is lost, and the event is delivered again, not lost.
func TestLockLostMidDelivery(t *testing.T) {
	t.Parallel()
	emu := emulator(t)
	q, name := openEmulated(t, emu, relaytest.Settings{LockDuration: 5 * time.Second, MaxDeliveryCount: 5, DuplicateWindow: time.Minute}, true)
	if err := q.SendBatch(tctx(t), []relay.Message{event(t, "slow", "call-1")}); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	attempts := 0
	delivered := make(chan struct{})
	w, _ := consumer.New(q, consumer.HandlerFunc(func(ctx context.Context, _ *schemas.Event) error {
		mu.Lock()
		attempts++
		n := attempts
		mu.Unlock()
		if n == 1 {
			emu.ExpireLocks(name) // the lock is lost mid-delivery
			<-ctx.Done()          // the worker notices and gives up on this copy
			return ctx.Err()
		}
		close(delivered)
		return nil
	}), consumer.Config{})
	testrun.Start(t, w.Run) // stopped, and waited for, before the queue and emulator close
	select {
	case <-delivered:
	case <-time.After(30 * time.Second):
		t.Fatal("the event was not delivered again after its lock was lost")
	}
}

// TestKilledWorkerLeavesNothingStuck receives without settling and then
// drops the worker's connection, as a killed process would: once the lock
// expires another worker gets the message.
func TestKilledWorkerLeavesNothingStuck(t *testing.T) {
	t.Parallel()
	emu := emulator(t)
	want := relaytest.Settings{LockDuration: time.Second, MaxDeliveryCount: 5, DuplicateWindow: time.Minute}
	q1, name := openEmulated(t, emu, want, true)
	if err := q1.SendBatch(tctx(t), []relay.Message{event(t, "orphan", "call-1")}); err != nil {
		t.Fatal(err)
	}
	msgs, err := q1.Receive(tctx(t), 1)
	if err != nil {
		t.Fatal(err)
	}
	emu.CloseConnections(true) // the worker dies holding the lock
	q1.Close()
	q2, err := servicebus.Open(context.Background(), servicebus.Config{Queue: name, ConnectionString: emu.ConnectionString()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	runQueue(t, q2)
	got, err := q2.Receive(tctx(t), 1)
	if err != nil {
		t.Fatalf("after the worker died: %v", err)
	}
	if got[0].ID != msgs[0].ID || got[0].DeliveryCount != 2 {
		t.Errorf("redelivered %s (count %d)", got[0].ID, got[0].DeliveryCount)
	}
	if err := q2.Complete(tctx(t), got[0]); err != nil {
		t.Fatal(err)
	}
}

// TestForcedDetachRecovers force-detaches every link mid-run: the SDK
// re-attaches and work goes on.
func TestForcedDetachRecovers(t *testing.T) {
	t.Parallel()
	emu := emulator(t)
	q, name := openEmulated(t, emu, settings, true)
	if err := q.SendBatch(tctx(t), []relay.Message{event(t, "a", "k1")}); err != nil {
		t.Fatal(err)
	}
	if n := emu.DetachLinks(name); n == 0 {
		t.Fatal("no links detached")
	}
	if err := q.SendBatch(tctx(t), []relay.Message{event(t, "b", "k2")}); err != nil {
		t.Fatalf("send after a forced detach: %v", err)
	}
	if got := drain(t, q); got["a"] != 1 || got["b"] != 1 {
		t.Errorf("drained %v", got)
	}
}

// TestWaitingMessageKeepsItsSessionLock: a message the session pool has
// received but no consumer has asked for yet (every worker slot busy) keeps
// its session lock while it waits, longer than the lock duration: once
// handed out it can be completed, delivered once.
func TestWaitingMessageKeepsItsSessionLock(t *testing.T) {
	t.Parallel()
	emu := emulator(t)
	q, _ := openEmulated(t, emu, settings, true)
	if err := q.SendBatch(tctx(t), []relay.Message{event(t, "a", "k1")}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2*settings.LockDuration + 500*time.Millisecond) // the pool holds a, waiting for a consumer
	msgs, err := q.Receive(tctx(t), 1)
	if err != nil || len(msgs) != 1 || msgs[0].ID != "a" {
		t.Fatalf("receive: %v %v", msgs, err)
	}
	if msgs[0].DeliveryCount != 1 {
		t.Errorf("delivery count %d, want 1: the lock lapsed while the message waited", msgs[0].DeliveryCount)
	}
	if until := msgs[0].LockedUntil; time.Until(until) < settings.LockDuration/4 {
		t.Errorf("handed out with its lock ending in %v", time.Until(until))
	}
	if err := q.Complete(tctx(t), msgs[0]); err != nil {
		t.Fatalf("complete after waiting: %v", err)
	}
}
