package servicebus_test

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"

	"github.com/hookbridge/hookbridge/relay"
)

func ids(ms []relay.BrowsedMessage) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.EventID()+":"+string(m.State))
	}
	return out
}

// TestBrowseSessions browses a session-enabled queue through the emulator:
// sessions listed, a call found with its dead-lettered and waiting events,
// a call a worker holds reported rather than peeked, and no session left
// locked by the browse.
func TestBrowseSessions(t *testing.T) {
	t.Parallel()
	emu := emulator(t)
	q, name := openEmulatedIdle(t, emu, settings, true)
	ctx := tctx(t)
	if err := q.SendBatch(ctx, []relay.Message{event(t, "e1", "call-1"), event(t, "e2", "call-1"), event(t, "e3", "call-2")}); err != nil {
		t.Fatal(err)
	}
	client, err := azservicebus.NewClientFromConnectionString(emu.ConnectionString(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close(ctx)
	// A worker dead-letters call-1's first event.
	sr, err := client.AcceptSessionForQueue(ctx, name, "call-1", nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := sr.ReceiveMessages(ctx, 1, nil)
	if err != nil || len(got) != 1 {
		t.Fatalf("receive: %v", err)
	}
	reason := "BackendRejected"
	if err := sr.DeadLetterMessage(ctx, got[0], &azservicebus.DeadLetterOptions{Reason: &reason}); err != nil {
		t.Fatal(err)
	}
	sr.Close(ctx)

	s, err := q.Summary(ctx, relay.SummaryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var sessions []string
	for _, b := range s.Sessions {
		sessions = append(sessions, b.SessionID)
	}
	slices.Sort(sessions)
	if s.DeadLettered != 1 || s.Active != -1 || s.KnowsLocks || !slices.Equal(sessions, []string{"call-1", "call-2"}) || len(s.Notes) == 0 {
		t.Errorf("summary = %+v (sessions %v)", s, sessions)
	}

	f, err := q.Find(ctx, relay.FindQuery{PartitionKey: "call-1"})
	if err != nil {
		t.Fatal(err)
	}
	if got := ids(f.Messages); !slices.Equal(got, []string{"e1:dead-lettered", "e2:active"}) {
		t.Errorf("find call-1 = %v", got)
	}
	if f.Messages[0].Reason != "BackendRejected" {
		t.Errorf("reason %q", f.Messages[0].Reason)
	}
	// By the dead letter's event ID: the whole call.
	f, err = q.Find(ctx, relay.FindQuery{ID: "e1"})
	if err != nil {
		t.Fatal(err)
	}
	if got := ids(f.Messages); !slices.Equal(got, []string{"e1:dead-lettered", "e2:active"}) {
		t.Errorf("find e1 = %v", got)
	}

	// The browse released the session: a worker can take it at once.
	sr, err = client.AcceptSessionForQueue(ctx, name, "call-1", nil)
	if err != nil {
		t.Fatalf("call-1's session after the browse: %v", err)
	}
	// Held by that worker, it cannot be peeked: said, not an error.
	f, err = q.Find(ctx, relay.FindQuery{PartitionKey: "call-1"})
	if err != nil {
		t.Fatal(err)
	}
	if got := ids(f.Messages); !slices.Equal(got, []string{"e1:dead-lettered"}) || !strings.Contains(strings.Join(f.Notes, " "), "being delivered") {
		t.Errorf("find of a held call = %v, notes %q", got, f.Notes)
	}
	e2 := relay.MessageRef{SequenceNumber: 2, SessionID: "call-1"}
	if _, err := q.Peek(ctx, e2); !errors.Is(err, relay.ErrUnavailable) {
		t.Errorf("peek in a held session: %v, want ErrUnavailable", err)
	}
	sr.Close(ctx)

	m, err := q.Peek(ctx, e2)
	if err != nil || m.EventID() != "e2" || m.SessionID != "call-1" || len(m.Body) == 0 {
		t.Errorf("peek e2 = %+v, %v", m, err)
	}
	d, err := q.Peek(ctx, relay.MessageRef{DeadLettered: true, SequenceNumber: f.Messages[0].SequenceNumber})
	if err != nil || d.EventID() != "e1" || d.State != relay.StateDeadLettered {
		t.Errorf("peek dead letter = %+v, %v", d, err)
	}
	if _, err := q.Peek(ctx, relay.MessageRef{SequenceNumber: 2}); !errors.Is(err, relay.ErrNotFound) {
		t.Errorf("peek without the session: %v, want ErrNotFound", err)
	}
	if _, err := q.Peek(ctx, relay.MessageRef{SequenceNumber: 99, SessionID: "call-1"}); !errors.Is(err, relay.ErrNotFound) {
		t.Errorf("peek of a missing message: %v, want ErrNotFound", err)
	}
}

// TestBrowseWithoutSessions: on a queue without sessions the queue itself
// is peeked, and the partition key read from the event.
func TestBrowseWithoutSessions(t *testing.T) {
	t.Parallel()
	emu := emulator(t)
	q, _ := openEmulatedIdle(t, emu, settings, false)
	ctx := tctx(t)
	if err := q.SendBatch(ctx, []relay.Message{event(t, "n1", "call-9"), event(t, "n2", ""), event(t, "n3", "call-9")}); err != nil {
		t.Fatal(err)
	}
	s, err := q.Summary(ctx, relay.SummaryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if s.Active != 3 || s.Waiting != 3 || s.DeadLettered != 0 || s.Oldest == nil || s.Oldest.EventID() != "n1" || s.KnowsLocks {
		t.Errorf("summary = %+v", s)
	}
	f, err := q.Find(ctx, relay.FindQuery{PartitionKey: "call-9"})
	if err != nil {
		t.Fatal(err)
	}
	if got := ids(f.Messages); !slices.Equal(got, []string{"n1:active", "n3:active"}) {
		t.Errorf("find call-9 = %v", got)
	}
	m, err := q.Peek(ctx, relay.MessageRef{SequenceNumber: f.Messages[1].SequenceNumber})
	if err != nil || m.EventID() != "n3" {
		t.Errorf("peek n3 = %+v, %v", m, err)
	}
}

// TestBrowseScheduledAndDeferred: a call's events that a client scheduled
// or a receiver deferred are found with their state, a scheduled one with
// the time it becomes visible, in sequence order with the active one.
func TestBrowseScheduledAndDeferred(t *testing.T) {
	t.Parallel()
	emu := emulator(t)
	q, name := openEmulatedIdle(t, emu, settings, true)
	ctx := tctx(t)
	if err := q.SendBatch(ctx, []relay.Message{event(t, "e1", "call-1"), event(t, "e2", "call-1")}); err != nil {
		t.Fatal(err)
	}
	client, err := azservicebus.NewClientFromConnectionString(emu.ConnectionString(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close(ctx)
	// A client schedules a third event of the call for an hour from now.
	sender, err := client.NewSender(name, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sender.Close(ctx)
	e3 := event(t, "e3", "call-1")
	session := "call-1"
	at := time.Now().Add(time.Hour).UTC().Truncate(time.Millisecond)
	if _, err := sender.ScheduleMessages(ctx, []*azservicebus.Message{{MessageID: &e3.ID, SessionID: &session, Body: e3.Body, ApplicationProperties: e3.Properties}}, at, nil); err != nil {
		t.Fatal(err)
	}
	// A receiver defers the call's first event.
	sr, err := client.AcceptSessionForQueue(ctx, name, session, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := sr.ReceiveMessages(ctx, 1, nil)
	if err != nil || len(got) != 1 {
		t.Fatalf("receive: %v", err)
	}
	if err := sr.DeferMessage(ctx, got[0], nil); err != nil {
		t.Fatal(err)
	}
	sr.Close(ctx)

	f, err := q.Find(ctx, relay.FindQuery{PartitionKey: session})
	if err != nil {
		t.Fatal(err)
	}
	if got := ids(f.Messages); !slices.Equal(got, []string{"e1:deferred", "e2:active", "e3:scheduled"}) {
		t.Fatalf("find call-1 = %v, want e1 deferred, e2 active, e3 scheduled", got)
	}
	if v := f.Messages[2].VisibleAt; !v.Equal(at) {
		t.Errorf("scheduled event visible at %v, want %v", v, at)
	}
	if !f.Messages[0].VisibleAt.IsZero() || !f.Messages[1].VisibleAt.IsZero() {
		t.Errorf("visible-at set on an unscheduled event: %+v", f.Messages[:2])
	}
}
