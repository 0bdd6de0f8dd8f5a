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

	"github.com/hookbridge/hookbridge/consumer"
	"github.com/hookbridge/hookbridge/internal/metrictest"
	"github.com/hookbridge/hookbridge/internal/sbemu"
	"github.com/hookbridge/hookbridge/internal/testlog"
	"github.com/hookbridge/hookbridge/internal/testrun"
	"github.com/hookbridge/hookbridge/internal/testwait"
	"github.com/hookbridge/hookbridge/relay"
	"github.com/hookbridge/hookbridge/relay/relaytest"
	"github.com/hookbridge/hookbridge/relay/servicebus"
	"github.com/hookbridge/hookbridge/schemas"
)

// TestMarkedMessagesDeadLetteredOnArrival: a message the ingress sends
// with a DeadLetterReason (a signed but malformed event) goes to the queue
// marked, and the backend's receivers — the session pool and the plain
// receiver — dead-letter it on arrival with that reason and description,
// never hand it out, count it and log it; the call's next event follows.
func TestMarkedMessagesDeadLetteredOnArrival(t *testing.T) {
	t.Parallel()
	for _, sessions := range []bool{true, false} {
		t.Run(fmt.Sprintf("sessions=%v", sessions), func(t *testing.T) {
			t.Parallel()
			emu := emulator(t)
			name := fmt.Sprintf("marked-%v", sessions)
			if err := emu.CreateQueue(sbemu.QueueConfig{Name: name, RequiresSession: sessions, LockDuration: 5 * time.Second}); err != nil {
				t.Fatal(err)
			}
			var logs testlog.Buffer
			q, err := servicebus.Open(context.Background(), servicebus.Config{Queue: name, ConnectionString: emu.ConnectionString(),
				Sessions: &sessions, SessionIdle: 200 * time.Millisecond}, slog.New(slog.NewJSONHandler(&logs, nil)))
			if err != nil {
				t.Fatal(err)
			}
			reg := prometheus.NewRegistry()
			reg.MustRegister(q.Collector())
			runQueue(t, q)
			bad := event(t, "evt-bad", "call-1")
			bad.DeadLetterReason, bad.DeadLetterDescription = relay.ReasonMalformedEvent, "specversion is 0.3, want 1.0"
			if err := q.SendBatch(tctx(t), []relay.Message{bad, event(t, "evt-good", "call-1")}); err != nil {
				t.Fatal(err)
			}
			msgs, err := q.Receive(tctx(t), 1)
			if err != nil {
				t.Fatal(err)
			}
			if len(msgs) != 1 || msgs[0].ID != "evt-good" {
				t.Fatalf("received %v, want only evt-good", msgs)
			}
			for k := range msgs[0].Properties {
				if strings.HasPrefix(k, "hookbridge_deadletter") || strings.HasPrefix(k, "DeadLetter") {
					t.Errorf("received message carries %s", k)
				}
			}
			if err := q.Complete(tctx(t), msgs[0]); err != nil {
				t.Fatal(err)
			}
			dls, err := q.ListDeadLetters(tctx(t), 0, 10)
			if err != nil || len(dls) != 1 {
				t.Fatalf("dead letters %v %v, want evt-bad", dls, err)
			}
			d := dls[0]
			if d.ID != "evt-bad" || d.Reason != relay.ReasonMalformedEvent || d.Description != "specversion is 0.3, want 1.0" {
				t.Errorf("dead letter %s reason %q description %q", d.ID, d.Reason, d.Description)
			}
			for k := range d.Properties {
				if strings.HasPrefix(k, "hookbridge_deadletter") || strings.HasPrefix(k, "DeadLetter") {
					t.Errorf("dead letter lists %s among its properties", k)
				}
			}
			if n := metrictest.Value(t, reg, "hookbridge_servicebus_dead_lettered_on_arrival_total", "reason", relay.ReasonMalformedEvent); n != 1 {
				t.Errorf("dead_lettered_on_arrival{reason=MalformedEvent} = %v, want 1", n)
			}
			if !strings.Contains(logs.String(), `"event_id":"evt-bad"`) || !strings.Contains(logs.String(), `"reason":"MalformedEvent"`) {
				t.Errorf("no log line with the event id and reason:\n%s", logs.String())
			}
		})
	}
}

// TestMaxDeliveryFromTheQueueURL: the queue's maximum delivery count, which
// the SDK does not report, comes from the URL's max_delivery and reaches the
// worker, which dead-letters the last delivery itself, visibly.
func TestMaxDeliveryFromTheQueueURL(t *testing.T) {
	t.Parallel()
	cfg, err := servicebus.ParseURL("servicebus:///q?max_delivery=3", "Endpoint=sb://x/;SharedAccessKeyName=a;SharedAccessKey=b")
	if err != nil || cfg.MaxDeliveryCount != 3 {
		t.Fatalf("max_delivery=3: %+v %v", cfg, err)
	}
	for _, bad := range []string{"0", "-1", "x", "5000"} {
		if _, err := servicebus.ParseURL("servicebus:///q?max_delivery="+bad, "Endpoint=sb://x/;SharedAccessKeyName=a;SharedAccessKey=b"); err == nil {
			t.Errorf("max_delivery=%s accepted", bad)
		}
	}

	emu := emulator(t)
	q, _ := openEmulatedIdle(t, emu, relaytest.Settings{LockDuration: 5 * time.Second, MaxDeliveryCount: 3, DuplicateWindow: time.Minute}, true)
	q.Close()
	name := q.Config().Queue
	q, err = servicebus.Open(context.Background(), servicebus.Config{Queue: name, ConnectionString: emu.ConnectionString(), MaxDeliveryCount: 3, SessionIdle: 200 * time.Millisecond}, nil)
	if err != nil {
		t.Fatal(err)
	}
	runQueue(t, q)
	if err := q.SendBatch(tctx(t), []relay.Message{event(t, "poison", "call-1")}); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	metrics := consumer.NewMetrics(reg)
	var logs testlog.Buffer
	attempts := make(chan int, 10)
	w, err := consumer.New(q, consumer.HandlerFunc(func(context.Context, *schemas.Event) error {
		attempts <- 1
		return errors.New("POST http://backend answered 500 Internal Server Error")
	}), consumer.Config{MinBackoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond, Metrics: metrics, Logger: slog.New(slog.NewJSONHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	stop := testrun.Start(t, w.Run)
	var dls []relay.DeadLetter
	testwait.Until(t, 20*time.Second, "dead-lettered", func() bool {
		dls, _ = q.ListDeadLetters(tctx(t), 0, 10)
		return len(dls) > 0
	})
	stop()
	if len(attempts) != 3 {
		t.Errorf("%d attempts, want 3", len(attempts))
	}
	d := dls[0]
	if d.Reason != relay.ReasonMaxDelivery || !strings.Contains(d.Description, "delivery 3 of 3 failed: POST http://backend answered 500") {
		t.Errorf("dead letter reason %q description %q: the worker did not dead-letter it itself", d.Reason, d.Description)
	}
	if metrictest.Value(t, reg, "hookbridge_worker_deliveries_total", "outcome", "dead_lettered") != 1 {
		t.Error("the dead-lettering was not counted dead_lettered")
	}
	if !strings.Contains(logs.String(), `"reason":"MaxDeliveryCountExceeded"`) || !strings.Contains(logs.String(), `"event_id":"poison"`) {
		t.Errorf("the dead-lettering was not logged with reason and event id:\n%s", logs.String())
	}
}

// deadLetterTypes fills q's dead-letter queue with n events alternating
// between types X and Y, and returns their IDs by type.
func deadLetterTypes(t *testing.T, q *servicebus.Queue, n int) map[string][]string {
	t.Helper()
	byType := map[string][]string{}
	var msgs []relay.Message
	for i := range n {
		typ := "X"
		if i%2 == 1 {
			typ = "Y"
		}
		m := event(t, fmt.Sprintf("dl-%d", i), fmt.Sprintf("call-%d", i))
		m.Subject = "Test." + typ
		msgs = append(msgs, m)
		byType[typ] = append(byType[typ], m.ID)
	}
	if err := q.SendBatch(tctx(t), msgs); err != nil {
		t.Fatal(err)
	}
	relaytest.DeadLetterAll(t, q, n, "Test", "poisoned")
	return byType
}

// TestDeadLetterToolingLeavesNothingLocked is the user's sequence, each
// command a new process (a new Queue and connection): a purge preview,
// purges and replays of one type while the other type's dead letters sit
// between them. Every run takes everything it selected: nothing an earlier
// run passed over, peeked or gave back is still locked.
func TestDeadLetterToolingLeavesNothingLocked(t *testing.T) {
	t.Parallel()
	emu := emulator(t)
	const lock = time.Minute // a lock left behind would outlast the test
	seed, name := openEmulated(t, emu, relaytest.Settings{LockDuration: lock, MaxDeliveryCount: 10, DuplicateWindow: time.Minute}, true)
	byType := deadLetterTypes(t, seed, 7)
	seed.Close()

	step := func(what string, f consumer.DeadLetterFilter, replay, dryRun bool, wantDone int) {
		t.Helper()
		q, err := servicebus.Open(context.Background(), servicebus.Config{Queue: name, ConnectionString: emu.ConnectionString(), LockDuration: lock}, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer q.Close()
		run := consumer.Purge
		if replay {
			run = consumer.Replay
		}
		res, err := run(tctx(t), q, f, consumer.ReplayOptions{DryRun: dryRun, ChunkSize: 2})
		if err != nil || res.Done != wantDone || res.Vanished != 0 {
			t.Fatalf("%s: %d selected, %d done, %d gone or taken by someone else (%v); want %d done and none gone",
				what, len(res.Selected), res.Done, res.Vanished, err, wantDone)
		}
	}
	step("purge preview of X", consumer.DeadLetterFilter{Type: "Test.X"}, false, true, 0)
	step("purge of X", consumer.DeadLetterFilter{Type: "Test.X", Limit: 2}, false, false, 2)
	step("replay of Y", consumer.DeadLetterFilter{Type: "Test.Y", Limit: 1}, true, false, 1)
	step("purge of Y", consumer.DeadLetterFilter{Type: "Test.Y"}, false, false, len(byType["Y"])-1)
	step("purge of X", consumer.DeadLetterFilter{Type: "Test.X"}, false, false, len(byType["X"])-2)
	if st, _ := emu.Stats(name); st.DeadLettered != 0 {
		t.Errorf("%d left in the dead-letter queue", st.DeadLettered)
	}
}

// TestConcurrentDeadLetterActions runs two purges at once on one queue, as
// two console users can: each takes all it selected, none reports the
// other's work as gone, and nothing is left locked.
func TestConcurrentDeadLetterActions(t *testing.T) {
	t.Parallel()
	emu := emulator(t)
	const lock = time.Minute
	q, name := openEmulated(t, emu, relaytest.Settings{LockDuration: lock, MaxDeliveryCount: 10, DuplicateWindow: time.Minute}, true)
	byType := deadLetterTypes(t, q, 8)
	errs := make(chan error, 2)
	for _, typ := range []string{"X", "Y"} {
		go func() {
			res, err := consumer.Purge(tctx(t), q, consumer.DeadLetterFilter{Type: "Test." + typ}, consumer.ReplayOptions{ChunkSize: 2})
			if err == nil && (res.Done != len(byType[typ]) || res.Vanished != 0) {
				err = fmt.Errorf("purge of %s: %d selected, %d done, %d gone or taken by someone else; want %d done and none gone",
					typ, len(res.Selected), res.Done, res.Vanished, len(byType[typ]))
			}
			errs <- err
		}()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if st, _ := emu.Stats(name); st.DeadLettered != 0 {
		t.Errorf("%d left in the dead-letter queue", st.DeadLettered)
	}
}

// TestDeadLetterToolingFaultsOnServiceBus injects failures into the
// dead-letter operations over Service Bus: every failure is reported, a
// purge goes on past a failed removal, and everything taken is given back,
// so that a clean run right after takes all that is left.
func TestDeadLetterToolingFaultsOnServiceBus(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name                     string
		replay                   bool
		fail                     func(op string, n int) bool
		done, failed, duplicated int
		errHas                   string
		// a clean run right after
		retried, stillLocked int
	}{
		{"purge: a removal fails", false, func(op string, n int) bool { return op == relaytest.OpComplete && n == 2 },
			3, 1, 0, "purge dead letter", 1, 0},
		{"purge: a removal and its give-back fail", false, func(op string, n int) bool {
			return (op == relaytest.OpComplete && n == 1) || op == relaytest.OpRelease
		}, 3, 1, 0, "stays locked until its lock expires", 0, 1},
		{"replay: the send fails", true, func(op string, n int) bool { return op == relaytest.OpSend && n == 1 },
			0, 2, 0, "nothing was removed", 4, 0},
		{"replay: a removal fails", true, func(op string, n int) bool { return op == relaytest.OpComplete && n == 3 },
			3, 0, 1, "still in the dead-letter queue", 1, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			emu := emulator(t)
			q, _ := openEmulated(t, emu, relaytest.Settings{LockDuration: time.Minute, MaxDeliveryCount: 10, DuplicateWindow: time.Minute}, true)
			deadLetterTypes(t, q, 4)
			fail := tt.fail
			faulty := &relaytest.FaultyDeadLetters{DeadLetterQueue: q, Fail: fail}
			run := consumer.Purge
			if tt.replay {
				run = consumer.Replay
			}
			res, err := run(tctx(t), faulty, consumer.DeadLetterFilter{}, consumer.ReplayOptions{ChunkSize: 2})
			if !errors.Is(err, relaytest.ErrInjected) || !strings.Contains(err.Error(), tt.errHas) {
				t.Fatalf("error %v: want the injected failure, saying %q", err, tt.errHas)
			}
			if res.Done != tt.done || res.Failed != tt.failed || res.Duplicated != tt.duplicated || !res.Incomplete() {
				t.Errorf("result %+v, want done %d failed %d duplicated %d", res, tt.done, tt.failed, tt.duplicated)
			}
			res2, err := run(tctx(t), q, consumer.DeadLetterFilter{}, consumer.ReplayOptions{})
			if res2.Done != tt.retried || res2.Vanished != tt.stillLocked {
				t.Errorf("clean run after the faults: %+v %v; want %d done, %d still locked", res2, err, tt.retried, tt.stillLocked)
			}
		})
	}
}
