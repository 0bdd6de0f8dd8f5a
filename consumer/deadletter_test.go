package consumer_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hookbridge/hookbridge/consumer"
	"github.com/hookbridge/hookbridge/internal/sqlitetest"
	"github.com/hookbridge/hookbridge/internal/testrun"
	"github.com/hookbridge/hookbridge/relay"
	"github.com/hookbridge/hookbridge/relay/sqlite"
	"github.com/hookbridge/hookbridge/schemas"
)

// TestReplayEndToEnd poisons events so that they are dead-lettered (by the
// backend's 4xx and by the max delivery count), checks the dead-letter
// listing and a dry run, then fixes the backend and replays with filters,
// and sees the events delivered.
func TestReplayEndToEnd(t *testing.T) {
	t.Parallel()
	q := sqlitetest.Open(t, sqlite.Config{MaxDeliveryCount: 2})
	sendAll(t, q, event(t, "e-404", "call-a"), event(t, "e-500", "call-b"), event(t, "e-ok", "call-c"))

	var mu sync.Mutex
	broken := true
	delivered := map[string]int{}
	handler := consumer.HandlerFunc(func(_ context.Context, e *schemas.Event) error {
		mu.Lock()
		defer mu.Unlock()
		if broken {
			switch e.ID {
			case "e-404":
				return consumer.Permanent(consumer.ReasonBackendRejected, errors.New("POST http://backend answered 404 Not Found"))
			case "e-500":
				return errors.New("POST http://backend answered 500 Internal Server Error")
			}
		}
		delivered[e.ID]++
		return nil
	})
	w, _ := consumer.New(q, handler, consumer.Config{MinBackoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond})
	stop := testrun.Start(t, w.Run)
	waitDeadLetters(t, q, 2)

	var listed []relay.DeadLetter
	if err := consumer.ListDeadLetters(context.Background(), q, consumer.DeadLetterFilter{}, func(d relay.DeadLetter) error {
		listed = append(listed, d)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	reasons := map[string]string{}
	for _, d := range listed {
		reasons[d.ID] = d.Reason
	}
	if reasons["e-404"] != consumer.ReasonBackendRejected || reasons["e-500"] != relay.ReasonMaxDelivery {
		t.Fatalf("dead letters %v", reasons)
	}

	// A dry run selects and changes nothing.
	res, err := consumer.Replay(context.Background(), q, consumer.DeadLetterFilter{Reason: relay.ReasonMaxDelivery}, consumer.ReplayOptions{DryRun: true})
	if err != nil || len(res.Selected) != 1 || res.Selected[0].ID != "e-500" || res.Done != 0 {
		t.Fatalf("dry run: %+v %v", res, err)
	}
	if _, dl, _ := q.Counts(context.Background()); dl != 2 {
		t.Fatalf("dry run changed the dead-letter queue: %d left", dl)
	}

	mu.Lock()
	broken = false
	mu.Unlock()
	// Replay by type and partition key: only e-404 matches both.
	var progress []int
	res, err = consumer.Replay(context.Background(), q, consumer.DeadLetterFilter{Type: "Microsoft.Communication.CallConnected", PartitionKey: "call-a"},
		consumer.ReplayOptions{Progress: func(done, total int) { progress = append(progress, done) }})
	if err != nil || res.Done != 1 || len(progress) != 1 {
		t.Fatalf("replay: %+v %v progress %v", res, err, progress)
	}
	// Then the rest, by event ID.
	if res, err := consumer.Replay(context.Background(), q, consumer.DeadLetterFilter{IDs: []string{"e-500"}}, consumer.ReplayOptions{}); err != nil || res.Done != 1 {
		t.Fatalf("replay by id: %+v %v", res, err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		mu.Lock()
		n := delivered["e-404"] + delivered["e-500"]
		mu.Unlock()
		if n == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("replayed events not delivered: %v", delivered)
		}
		time.Sleep(20 * time.Millisecond)
	}
	stop()
	if _, dl, _ := q.Counts(context.Background()); dl != 0 {
		t.Errorf("%d left in the dead-letter queue", dl)
	}
}

func waitDeadLetters(t *testing.T, q *sqlite.Queue, n int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, dl, err := q.Counts(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if dl >= int64(n) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d dead letters, want %d", dl, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// failingComplete is the queue with CompleteDeadLetter failing: a replay
// interrupted between the re-send and the removal of the original.
type failingComplete struct{ *sqlite.Queue }

func (f failingComplete) CompleteDeadLetter(context.Context, *relay.DeadLetterLock) error {
	return errors.New("the process was killed here")
}

func TestInterruptedReplayDuplicatesNeverLoses(t *testing.T) {
	t.Parallel()
	q := sqlitetest.Open(t, sqlite.Config{MaxDeliveryCount: 1})
	sendAll(t, q, event(t, "e1", "call-1"))
	msgs, err := q.Receive(context.Background(), 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := q.DeadLetter(context.Background(), msgs[0], "Test", "poisoned"); err != nil {
		t.Fatal(err)
	}
	res, err := consumer.Replay(context.Background(), failingComplete{q}, consumer.DeadLetterFilter{}, consumer.ReplayOptions{})
	if err == nil || res.Duplicated != 1 {
		t.Fatalf("interrupted replay: %+v %v; want an error and one duplicate", res, err)
	}
	active, dl, _ := q.Counts(context.Background())
	if active != 1 || dl != 1 {
		t.Fatalf("after the interruption: %d in the queue, %d dead-lettered; want 1 and 1 (a duplicate, no loss)", active, dl)
	}
	got, err := q.Receive(context.Background(), 1)
	if err != nil {
		t.Fatal(err)
	}
	e, err := got[0].Event()
	if err != nil || e.ID != "e1" || got[0].ID == "e1" || got[0].Properties[relay.PropReplayCount] != int64(1) || got[0].Properties[relay.PropReplayOf] != "e1" {
		t.Errorf("replayed copy: %+v (event %v, err %v)", got[0].Message, e, err)
	}
	// A send that fails removes nothing.
	q2 := sqlitetest.Open(t, sqlite.Config{MaxDeliveryCount: 1})
	sendAll(t, q2, event(t, "e2", "call-2"))
	m2, _ := q2.Receive(context.Background(), 1)
	q2.DeadLetter(context.Background(), m2[0], "Test", "poisoned")
	if _, err := consumer.Replay(context.Background(), failingSend{q2}, consumer.DeadLetterFilter{}, consumer.ReplayOptions{}); err == nil {
		t.Fatal("replay with a failing send succeeded")
	}
	if active, dl, _ := q2.Counts(context.Background()); active != 0 || dl != 1 {
		t.Errorf("after a failed send: %d queued, %d dead-lettered; want 0 and 1", active, dl)
	}
	// The released message can be replayed later.
	if res, err := consumer.Replay(context.Background(), q2, consumer.DeadLetterFilter{}, consumer.ReplayOptions{}); err != nil || res.Done != 1 {
		t.Errorf("replay after the failure: %+v %v", res, err)
	}
}

type failingSend struct{ *sqlite.Queue }

func (f failingSend) SendBatch(context.Context, []relay.Message) error {
	return fmt.Errorf("%w: disk full", relay.ErrUnavailable)
}

func TestPurge(t *testing.T) {
	t.Parallel()
	q := sqlitetest.Open(t, sqlite.Config{})
	for i := range 5 {
		sendAll(t, q, event(t, fmt.Sprintf("p%d", i), ""))
	}
	for range 5 {
		m, _ := q.Receive(context.Background(), 1)
		reason := "Old"
		if m[0].ID == "p3" {
			reason = "Keep"
		}
		q.DeadLetter(context.Background(), m[0], reason, "")
	}
	res, err := consumer.Purge(context.Background(), q, consumer.DeadLetterFilter{Reason: "Old", Limit: 3}, consumer.ReplayOptions{})
	if err != nil || res.Done != 3 {
		t.Fatalf("purge: %+v %v", res, err)
	}
	if active, dl, _ := q.Counts(context.Background()); active != 0 || dl != 2 {
		t.Errorf("after purge: %d queued, %d dead-lettered", active, dl)
	}
}

func TestDeadLetterFilter(t *testing.T) {
	t.Parallel()
	now := time.Now()
	d := relay.DeadLetter{Message: relay.Message{ID: "m1", SessionID: "k", Subject: "T", Properties: map[string]any{relay.PropID: "evt-1"}},
		Reason: "R", EnqueuedTime: now.Add(-time.Hour), DeadLetteredTime: now}
	tests := []struct {
		f    consumer.DeadLetterFilter
		want bool
	}{
		{consumer.DeadLetterFilter{}, true},
		{consumer.DeadLetterFilter{IDs: []string{"m1"}}, true},
		{consumer.DeadLetterFilter{IDs: []string{"evt-1"}}, true},
		{consumer.DeadLetterFilter{IDs: []string{"x"}}, false},
		{consumer.DeadLetterFilter{Type: "T", Reason: "R", PartitionKey: "k"}, true},
		{consumer.DeadLetterFilter{Type: "U"}, false},
		{consumer.DeadLetterFilter{Reason: "S"}, false},
		{consumer.DeadLetterFilter{PartitionKey: "j"}, false},
		{consumer.DeadLetterFilter{Since: now.Add(-time.Minute)}, true},
		{consumer.DeadLetterFilter{Since: now.Add(time.Minute)}, false},
		{consumer.DeadLetterFilter{Until: now}, false},
		{consumer.DeadLetterFilter{Until: now.Add(time.Second)}, true},
	}
	for i, tt := range tests {
		if got := tt.f.Match(d); got != tt.want {
			t.Errorf("%d: %+v matched %v, want %v", i, tt.f, got, tt.want)
		}
	}
}

// TestReplayLeavesMalformedEvents: a MalformedEvent's body is what its
// sender posted, which a worker could only dead-letter again, so Replay
// leaves it in the dead-letter queue and says so, and replays the rest.
func TestReplayLeavesMalformedEvents(t *testing.T) {
	t.Parallel()
	q := sqlitetest.Open(t, sqlite.Config{})
	bad := relay.Message{ID: "malformed-1", Subject: "x", ContentType: "application/json", Body: []byte(`{"id":1}`),
		DeadLetterReason: relay.ReasonMalformedEvent, DeadLetterDescription: `attribute "id" must be a string`}
	good := event(t, "good-1", "call-1")
	good.DeadLetterReason, good.DeadLetterDescription = consumer.ReasonBackendRejected, "no"
	if err := q.SendBatch(context.Background(), []relay.Message{bad, good}); err != nil {
		t.Fatal(err)
	}
	waitDeadLetters(t, q, 2)
	dry, err := consumer.Replay(context.Background(), q, consumer.DeadLetterFilter{}, consumer.ReplayOptions{DryRun: true})
	if err != nil || dry.Unreplayable != 1 || len(dry.Selected) != 2 {
		t.Fatalf("dry run: %+v, %v; want 2 selected, 1 unreplayable, no error", dry, err)
	}
	res, err := consumer.Replay(context.Background(), q, consumer.DeadLetterFilter{}, consumer.ReplayOptions{})
	if err == nil || !strings.Contains(err.Error(), relay.ReasonMalformedEvent) {
		t.Errorf("replay: %v, want an error naming %s", err, relay.ReasonMalformedEvent)
	}
	if res.Done != 1 || res.Unreplayable != 1 || !res.Incomplete() {
		t.Errorf("replay result %+v: want the good one done, the malformed one left", res)
	}
	left, err := q.ListDeadLetters(context.Background(), 0, 10)
	if err != nil || len(left) != 1 || left[0].ID != "malformed-1" {
		t.Errorf("left in the dead-letter queue: %+v, %v", left, err)
	}
}
