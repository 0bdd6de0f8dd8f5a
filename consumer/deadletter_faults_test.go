package consumer_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hookbridge/hookbridge/consumer"
	"github.com/hookbridge/hookbridge/internal/sqlitetest"
	"github.com/hookbridge/hookbridge/relay"
	"github.com/hookbridge/hookbridge/relay/relaytest"
	"github.com/hookbridge/hookbridge/relay/sqlite"
)

// deadLettered makes a queue holding n dead-lettered events dl-0 … dl-(n-1).
func deadLettered(t *testing.T, n int) *sqlite.Queue {
	t.Helper()
	q := sqlitetest.Open(t, sqlite.Config{})
	for i := range n {
		sendAll(t, q, event(t, fmt.Sprintf("dl-%d", i), fmt.Sprintf("call-%d", i)))
	}
	for range n {
		m, err := q.Receive(context.Background(), 1)
		if err != nil {
			t.Fatal(err)
		}
		if err := q.DeadLetter(context.Background(), m[0], "Test", "poisoned"); err != nil {
			t.Fatal(err)
		}
	}
	return q
}

func failOn(op string, calls ...int) func(string, int) bool {
	return func(o string, n int) bool {
		if o != op {
			return false
		}
		for _, c := range calls {
			if c == n {
				return true
			}
		}
		return false
	}
}

// TestDeadLetterToolingNeverDropsAnError injects failures into the
// dead-letter operations of a real queue: every failure is reported, a
// purge goes on past a failed removal, every taken message is given back
// so that the next run can take it at once, and the result says the run
// was incomplete.
func TestDeadLetterToolingNeverDropsAnError(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		replay bool
		fail   func(string, int) bool
		// want after the faulty run
		done, failed, duplicated int
		errHas                   []string
		// then a clean run of the same filter does this many
		retried int
	}{
		{"purge: a removal fails", false, failOn(relaytest.OpComplete, 2), 3, 1, 0,
			[]string{"purge dead letter", "injected"}, 1},
		{"purge: removals fail and a give-back too", false, func(op string, n int) bool {
			return (op == relaytest.OpComplete && n <= 2) || (op == relaytest.OpRelease && n == 1)
		}, 2, 2, 0, []string{"purge dead letter", "give dead letter", "back"}, 1},
		{"purge: the take fails", false, failOn(relaytest.OpTake, 1), 0, 0, 0, []string{"take dead letters"}, 4},
		{"replay: the send fails", true, failOn(relaytest.OpSend, 1), 0, 2, 0,
			[]string{"re-send 2 dead letters", "nothing was removed"}, 4},
		{"replay: a removal fails", true, failOn(relaytest.OpComplete, 3), 3, 0, 1,
			[]string{"still in the dead-letter queue", "remove replayed dead letter"}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			q := deadLettered(t, 4)
			faulty := &relaytest.FaultyDeadLetters{DeadLetterQueue: q, Fail: tt.fail}
			run := consumer.Purge
			if tt.replay {
				run = consumer.Replay
			}
			res, err := run(context.Background(), faulty, consumer.DeadLetterFilter{}, consumer.ReplayOptions{ChunkSize: 2})
			if err == nil {
				t.Fatal("no error")
			}
			for _, want := range tt.errHas {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q lacks %q", err, want)
				}
			}
			if !errors.Is(err, relaytest.ErrInjected) {
				t.Errorf("error %q does not wrap the injected failure", err)
			}
			if res.Done != tt.done || res.Failed != tt.failed || res.Duplicated != tt.duplicated || !res.Incomplete() {
				t.Errorf("result done %d failed %d duplicated %d incomplete %v, want %d %d %d true",
					res.Done, res.Failed, res.Duplicated, res.Incomplete(), tt.done, tt.failed, tt.duplicated)
			}
			// Nothing taken was left locked: a clean run takes every message
			// that is left, at once (a failed give-back excepted).
			res2, err := run(context.Background(), q, consumer.DeadLetterFilter{}, consumer.ReplayOptions{})
			lockedByFailedRelease := 0
			if tt.fail(relaytest.OpRelease, 1) {
				lockedByFailedRelease = 1
			}
			if res2.Done != tt.retried {
				t.Errorf("clean run after the faults did %d, want %d: %+v, %v", res2.Done, tt.retried, res2, err)
			}
			if res2.Vanished != lockedByFailedRelease {
				t.Errorf("clean run found %d messages still locked, want %d (only a failed give-back leaves a lock)", res2.Vanished, lockedByFailedRelease)
			}
		})
	}
}

// TestPurgeInterruptedGivesBackWhatItTook cancels a purge half-way: what
// it took and did not remove goes back.
func TestPurgeInterruptedGivesBackWhatItTook(t *testing.T) {
	t.Parallel()
	q := deadLettered(t, 4)
	ctx, cancel := context.WithCancel(context.Background())
	faulty := &relaytest.FaultyDeadLetters{DeadLetterQueue: q, Fail: func(op string, n int) bool {
		if op == relaytest.OpComplete && n == 2 {
			cancel() // the user presses Ctrl-C during the second removal
		}
		return false
	}}
	res, err := consumer.Purge(ctx, faulty, consumer.DeadLetterFilter{}, consumer.ReplayOptions{ChunkSize: 4})
	if !errors.Is(err, context.Canceled) || !res.Incomplete() {
		t.Fatalf("interrupted purge: %+v %v", res, err)
	}
	res2, err := consumer.Purge(context.Background(), q, consumer.DeadLetterFilter{}, consumer.ReplayOptions{})
	if err != nil || res2.Vanished != 0 || res.Done+res2.Done != 4 {
		t.Errorf("after the interruption: first %+v, then %+v %v; want every message purged, none left locked", res, res2, err)
	}
}

// ackLost sends the first batch but reports it failed, as when the queue
// stored the copies and the connection dropped before its answer.
type ackLost struct {
	consumer.DeadLetterQueue
	lost bool
}

func (a *ackLost) SendBatch(ctx context.Context, msgs []relay.Message) error {
	if err := a.DeadLetterQueue.SendBatch(ctx, msgs); err != nil {
		return err
	}
	if !a.lost {
		a.lost = true
		return fmt.Errorf("%w: answer lost (injected)", relay.ErrUnavailable)
	}
	return nil
}

// TestReplayRunAgainAfterALostAnswer: a replay whose send was stored but
// not acknowledged removes nothing and says so; run again, it replays
// every dead letter, and the backend's side of the queue holds each event
// once: the second run's copies are the first's, which duplicate detection
// drops.
func TestReplayRunAgainAfterALostAnswer(t *testing.T) {
	t.Parallel()
	q := deadLettered(t, 4)
	res, err := consumer.Replay(context.Background(), &ackLost{DeadLetterQueue: q}, consumer.DeadLetterFilter{}, consumer.ReplayOptions{})
	if err == nil || res.Done != 0 || !strings.Contains(err.Error(), "run the replay again") {
		t.Fatalf("replay with its answer lost: done %d, %v; want nothing done and the advice to run it again", res.Done, err)
	}
	res, err = consumer.Replay(context.Background(), q, consumer.DeadLetterFilter{}, consumer.ReplayOptions{})
	if err != nil || res.Done != 4 {
		t.Fatalf("replay run again: done %d, %v; want 4", res.Done, err)
	}
	seen := map[string]int{}
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		got, err := q.Receive(ctx, 10)
		cancel()
		if len(got) == 0 || err != nil {
			break
		}
		for _, m := range got {
			e, err := m.Event()
			if err != nil {
				t.Fatal(err)
			}
			seen[e.ID]++
			if err := q.Complete(context.Background(), m); err != nil {
				t.Fatal(err)
			}
		}
	}
	if len(seen) != 4 {
		t.Errorf("events delivered after the two runs: %v, want dl-0 … dl-3", seen)
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("event %s delivered %d times, want once", id, n)
		}
	}
}

// notSending sends every message but the replayed copy of one original,
// which it reports left out, as a backend does with a message too large
// for it.
type notSending struct {
	consumer.DeadLetterQueue
	original string
}

func (n notSending) SendBatch(ctx context.Context, msgs []relay.Message) error {
	var send []relay.Message
	var left []string
	for _, m := range msgs {
		if m.Properties[relay.PropReplayOf] == n.original {
			left = append(left, m.ID)
		} else {
			send = append(send, m)
		}
	}
	if err := n.DeadLetterQueue.SendBatch(ctx, send); err != nil {
		return err
	}
	if len(left) > 0 {
		return &relay.NotSentError{IDs: left, Err: fmt.Errorf("%w: injected", relay.ErrMessageTooLarge)}
	}
	return nil
}

// TestReplayOfACopyNotSent: when the queue sends a chunk's copies but one,
// only that one's original stays dead-lettered; the others are removed, so
// a later run replays nothing twice.
func TestReplayOfACopyNotSent(t *testing.T) {
	t.Parallel()
	q := deadLettered(t, 4)
	dls, err := q.ListDeadLetters(context.Background(), 0, 10)
	if err != nil || len(dls) != 4 {
		t.Fatalf("dead letters: %v %v", dls, err)
	}
	res, err := consumer.Replay(context.Background(), notSending{q, dls[0].ID}, consumer.DeadLetterFilter{}, consumer.ReplayOptions{ChunkSize: 2})
	if !errors.Is(err, relay.ErrMessageTooLarge) || !strings.Contains(err.Error(), "re-send 1 of 2 dead letters") {
		t.Errorf("replay: %v, want the copy left out reported", err)
	}
	if res.Done != 3 || res.Failed != 1 || res.Duplicated != 0 {
		t.Errorf("replay: done %d failed %d duplicated %d, want 3 1 0", res.Done, res.Failed, res.Duplicated)
	}
	// A clean run replays the one left, once.
	res, err = consumer.Replay(context.Background(), q, consumer.DeadLetterFilter{}, consumer.ReplayOptions{})
	if err != nil || res.Done != 1 || res.Vanished != 0 {
		t.Fatalf("second replay: done %d vanished %d (%v), want the one left replayed", res.Done, res.Vanished, err)
	}
	active, dead, err := q.Counts(context.Background())
	if err != nil || active != 4 || dead != 0 {
		t.Errorf("after both runs: %d in the queue, %d dead-lettered (%v); want each event once in the queue", active, dead, err)
	}
}
