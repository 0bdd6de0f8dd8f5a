package sqlite_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/hookbridge/hookbridge/consumer"
	"github.com/hookbridge/hookbridge/internal/sqlitetest"
	"github.com/hookbridge/hookbridge/relay"
	"github.com/hookbridge/hookbridge/relay/sqlite"
)

func browseMsg(id, session, typ string) relay.Message {
	return relay.Message{ID: id, SessionID: session, Subject: typ, ContentType: "application/cloudevents+json",
		Body:       []byte(fmt.Sprintf(`{"id":%q,"type":%q}`, id, typ)),
		Properties: map[string]any{relay.PropID: id, relay.PropType: typ}}
}

// TestBrowse fills a queue with two calls and a keyless event, locks one
// call's head, delays another's, dead-letters and replays, and checks what
// Summary, Find and Peek see.
func TestBrowse(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q := sqlitetest.Open(t, sqlite.Config{LockDuration: time.Minute})
	send := func(msgs ...relay.Message) {
		t.Helper()
		if err := q.SendBatch(ctx, msgs); err != nil {
			t.Fatal(err)
		}
	}
	send(browseMsg("a1", "call-a", "T.Connected"), browseMsg("b1", "call-b", "T.Connected"),
		browseMsg("a2", "call-a", "T.Play"), browseMsg("k1", "", "T.Keyless"), browseMsg("b2", "call-b", "T.Play"))

	// Take the three heads: a1 is dead-lettered, b1 abandoned with a delay,
	// k1 stays locked.
	got, err := q.Receive(ctx, 3)
	if err != nil || len(got) != 3 {
		t.Fatalf("receive: %d, %v", len(got), err)
	}
	for _, m := range got {
		switch m.ID {
		case "a1":
			err = q.DeadLetter(ctx, m, "BackendRejected", "400 from the backend")
		case "b1":
			err = q.Abandon(ctx, m, time.Hour)
		case "k1":
		default:
			t.Fatalf("unexpected head %s", m.ID)
		}
		if err != nil {
			t.Fatal(err)
		}
	}

	s, err := q.Summary(ctx, relay.SummaryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if s.Active != 4 || s.DeadLettered != 1 || s.Scanned != 4 || s.Locked != 1 || s.Delayed != 1 || s.Waiting != 2 || s.Truncated {
		t.Errorf("summary counts = %+v", s)
	}
	if s.Oldest == nil || s.Oldest.ID != "b1" || s.Oldest.State != relay.StateDelayed || s.Oldest.VisibleAt.Before(time.Now().Add(50*time.Minute)) {
		t.Errorf("oldest = %+v", s.Oldest)
	}
	if len(s.Sessions) != 2 || s.Sessions[0].SessionID != "call-b" || s.Sessions[0].Messages != 2 ||
		s.Sessions[1].SessionID != "call-a" || s.Sessions[1].Messages != 1 || s.Sessions[1].Head == nil || s.Sessions[1].Head.ID != "a2" {
		t.Errorf("sessions = %+v", s.Sessions)
	}

	// Bounded: a scan of 2 and one session.
	s, err = q.Summary(ctx, relay.SummaryOptions{Scan: 2, Sessions: 1})
	if err != nil {
		t.Fatal(err)
	}
	if s.Scanned != 2 || !s.Truncated || len(s.Sessions) != 1 || !s.MoreSessions {
		t.Errorf("bounded summary = %+v", s)
	}

	// Find a call: its events in order, each with its state.
	f, err := q.Find(ctx, relay.FindQuery{PartitionKey: "call-a"})
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Messages) != 2 || f.Messages[0].ID != "a1" || f.Messages[0].State != relay.StateDeadLettered ||
		f.Messages[0].Reason != "BackendRejected" || f.Messages[1].ID != "a2" || f.Messages[1].State != relay.StateWaiting {
		t.Errorf("find call-a = %+v", f.Messages)
	}
	f, err = q.Find(ctx, relay.FindQuery{ID: "k1"})
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Messages) != 1 || f.Messages[0].State != relay.StateLocked || f.Messages[0].DeliveryCount != 1 || f.Messages[0].LockedUntil.IsZero() {
		t.Errorf("find k1 = %+v", f.Messages)
	}

	// A replayed copy has a new MessageID: found by its event id.
	if _, err := consumer.Replay(ctx, q, consumer.DeadLetterFilter{IDs: []string{"a1"}}, consumer.ReplayOptions{}); err != nil {
		t.Fatal(err)
	}
	f, err = q.Find(ctx, relay.FindQuery{ID: "a1"})
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Messages) != 1 || f.Messages[0].ID == "a1" || f.Messages[0].EventID() != "a1" || f.Messages[0].State != relay.StateWaiting {
		t.Errorf("find replayed a1 = %+v", f.Messages)
	}
	// A body that merely mentions the id is not a match.
	send(relay.Message{ID: "other", SessionID: "call-c", Body: []byte(`{"note":"k1"}`), Properties: map[string]any{relay.PropID: "other"}})
	if f, err = q.Find(ctx, relay.FindQuery{ID: "k1"}); err != nil || len(f.Messages) != 1 {
		t.Errorf("find k1 after a mention: %+v, %v", f.Messages, err)
	}
	if f, err = q.Find(ctx, relay.FindQuery{PartitionKey: "call-a", Limit: 1}); err != nil || len(f.Messages) != 1 || !f.Truncated {
		t.Errorf("find with limit 1: %+v, %v", f, err)
	}
	if f, err = q.Find(ctx, relay.FindQuery{}); err != nil || len(f.Messages) != 0 {
		t.Errorf("empty query found %+v, %v", f.Messages, err)
	}

	// Peek, active and dead-lettered.
	m, err := q.Peek(ctx, relay.MessageRef{SequenceNumber: s.Oldest.SequenceNumber})
	if err != nil || m.ID != "b1" || string(m.Body) != `{"id":"b1","type":"T.Connected"}` {
		t.Errorf("peek = %+v, %v", m, err)
	}
	if _, err := q.Peek(ctx, relay.MessageRef{SequenceNumber: 9999}); !errors.Is(err, relay.ErrNotFound) {
		t.Errorf("peek of a missing message: %v, want ErrNotFound", err)
	}
	if _, err := q.Peek(ctx, relay.MessageRef{DeadLettered: true, SequenceNumber: 9999}); !errors.Is(err, relay.ErrNotFound) {
		t.Errorf("peek of a missing dead letter: %v, want ErrNotFound", err)
	}
}

// BenchmarkBrowse measures a summary and finds on a queue of 50,000
// waiting messages in 5,000 calls: the browse statements scan the queue
// table, which has no secondary index.
func BenchmarkBrowse(b *testing.B) {
	ctx := context.Background()
	q := sqlitetest.Open(b, sqlite.Config{})
	const calls, perCall = 5000, 10
	batch := make([]relay.Message, 0, calls)
	for i := range perCall {
		batch = batch[:0]
		for c := range calls {
			batch = append(batch, browseMsg(fmt.Sprintf("evt-%d-%d", c, i), fmt.Sprintf("call-%d", c), "Microsoft.Communication.PlayCompleted"))
		}
		if err := q.SendBatch(ctx, batch); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("Summary", func(b *testing.B) {
		for b.Loop() {
			if _, err := q.Summary(ctx, relay.SummaryOptions{}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("FindPartitionKey", func(b *testing.B) {
		for b.Loop() {
			if f, err := q.Find(ctx, relay.FindQuery{PartitionKey: "call-4321"}); err != nil || len(f.Messages) != perCall {
				b.Fatal(len(f.Messages), err)
			}
		}
	})
	b.Run("FindEventID", func(b *testing.B) {
		for b.Loop() {
			if f, err := q.Find(ctx, relay.FindQuery{ID: "evt-4321-7"}); err != nil || len(f.Messages) != 1 {
				b.Fatal(len(f.Messages), err)
			}
		}
	})
}
