// Package relaytest is the conformance suite of hookbridge's queue contract.
// Every queue backend runs it from its own tests:
//
//	func TestConformance(t *testing.T) {
//		relaytest.Run(t, func(t *testing.T, want relaytest.Settings) (relaytest.Queue, relaytest.Settings) {
//			q := openFreshQueue(t, want)
//			return q, want
//		})
//	}
//
// The suite checks what the consumer and the ingress rely on: publish then
// receive; complete; abandon then redelivery with the delivery count raised;
// lock expiry then redelivery; lock renewal; dead-lettering with a reason;
// the maximum delivery count; duplicate detection by MessageID; one message
// per session in flight, in order, under concurrent receivers; the
// dead-letter tooling's contract (list, take, complete, release; a taken
// message cannot be taken again until it is released); and close.
//
// FaultyDeadLetters wraps a queue's dead-letter side and fails chosen calls,
// for the replay and purge tests of each backend. Msg and EventMessage build
// the messages tests send.
package relaytest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hookbridge/hookbridge/internal/testwait"
	"github.com/hookbridge/hookbridge/relay"
	"github.com/hookbridge/hookbridge/schemas"
)

// Queue is the queue contract under test.
type Queue interface {
	SendBatch(ctx context.Context, msgs []relay.Message) error
	Receive(ctx context.Context, n int) ([]*relay.Received, error)
	Complete(ctx context.Context, m *relay.Received) error
	Abandon(ctx context.Context, m *relay.Received, delay time.Duration) error
	DeadLetter(ctx context.Context, m *relay.Received, reason, description string) error
	RenewLock(ctx context.Context, m *relay.Received) error
	ListDeadLetters(ctx context.Context, after int64, limit int) ([]relay.DeadLetter, error)
	TakeDeadLetters(ctx context.Context, seqs []int64) ([]*relay.DeadLetterLock, error)
	CompleteDeadLetter(ctx context.Context, l *relay.DeadLetterLock) error
	ReleaseDeadLetter(ctx context.Context, l *relay.DeadLetterLock) error
	Close() error
}

// Settings are the queue properties a test needs.
type Settings struct {
	LockDuration     time.Duration
	MaxDeliveryCount int
	DuplicateWindow  time.Duration
}

// Opener returns a new, empty queue with settings as close to want as the
// backend allows, and the settings it really has. The suite closes the queue
// (Close must tolerate a second call); the opener cleans up anything else.
type Opener func(t *testing.T, want Settings) (Queue, Settings)

var defaults = Settings{LockDuration: 2 * time.Second, MaxDeliveryCount: 10, DuplicateWindow: time.Minute}

// Run runs the whole suite.
func Run(t *testing.T, open Opener) {
	tests := []struct {
		name string
		fn   func(*testing.T, Opener)
	}{
		{"PublishReceive", testPublishReceive},
		{"Complete", testComplete},
		{"AbandonRedelivers", testAbandon},
		{"AbandonWithDelay", testAbandonDelay},
		{"LockExpiryRedelivers", testLockExpiry},
		{"RenewLock", testRenewLock},
		{"DeadLetter", testDeadLetter},
		{"MaxDeliveryCount", testMaxDelivery},
		{"DuplicateDetection", testDuplicates},
		{"SessionOrderUnderConcurrency", testSessionOrder},
		{"SessionBlockedByHead", testSessionHead},
		{"NoSessionInParallel", testNoSession},
		{"ReceiveHonoursContext", testReceiveContext},
		{"DeadLetterTakeCompleteRelease", testDeadLetterTake},
		{"Close", testClose},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.fn(t, open)
		})
	}
}

func openQueue(t *testing.T, open Opener, want Settings) (Queue, Settings) {
	t.Helper()
	q, got := open(t, want)
	t.Cleanup(func() { q.Close() })
	return q, got
}

// Msg builds a test message.
func Msg(id, session string) relay.Message {
	return relay.Message{
		ID:          id,
		SessionID:   session,
		Subject:     "Test.Event",
		ContentType: "application/cloudevents+json; charset=utf-8",
		Body:        []byte(fmt.Sprintf(`{"specversion":"1.0","id":%q,"source":"test","type":"Test.Event"}`, id)),
		Properties:  map[string]any{relay.PropType: "Test.Event", relay.PropID: id},
	}
}

// EventMessage is e's message as the ingress queues it, except that its
// MessageID is e.ID (not a digest of source and id), so that tests name
// messages by their event's id.
func EventMessage(t testing.TB, e schemas.Event) relay.Message {
	t.Helper()
	m, err := relay.NewMessage(&e)
	if err != nil {
		t.Fatalf("relaytest: %v", err)
	}
	m.ID = e.ID
	return m
}

// DeadLetterAll receives n messages from q and dead-letters each with
// reason and description.
func DeadLetterAll(t testing.TB, q interface {
	Receive(ctx context.Context, n int) ([]*relay.Received, error)
	DeadLetter(ctx context.Context, m *relay.Received, reason, description string) error
}, n int, reason, description string) {
	t.Helper()
	ctx := testwait.Context(t, 30*time.Second)
	for done := 0; done < n; {
		got, err := q.Receive(ctx, n-done)
		if err != nil {
			t.Fatalf("relaytest: receive to dead-letter (%d of %d done): %v", done, n, err)
		}
		for _, m := range got {
			if err := q.DeadLetter(ctx, m, reason, description); err != nil {
				t.Fatalf("relaytest: dead-letter %s: %v", m.ID, err)
			}
			done++
		}
	}
}

func send(t *testing.T, q Queue, msgs ...relay.Message) {
	t.Helper()
	if err := q.SendBatch(testwait.Context(t, 10*time.Second), msgs); err != nil {
		t.Fatalf("SendBatch: %v", err)
	}
}

// receiveOne waits up to d for one message.
func receiveOne(t *testing.T, q Queue, d time.Duration) *relay.Received {
	t.Helper()
	msgs, err := q.Receive(testwait.Context(t, d), 1)
	if err != nil {
		t.Fatalf("Receive: %v", err)
	}
	if len(msgs) != 1 {
		t.Fatalf("Receive returned %d messages, want 1", len(msgs))
	}
	return msgs[0]
}

// expectNothing asserts no message becomes available within d.
func expectNothing(t *testing.T, q Queue, d time.Duration) {
	t.Helper()
	msgs, err := q.Receive(testwait.Context(t, d), 10)
	if err == nil || len(msgs) > 0 {
		ids := []string{}
		for _, m := range msgs {
			ids = append(ids, m.ID)
		}
		t.Fatalf("Receive got %v (err %v), want nothing", ids, err)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Receive with nothing available: err = %v, want context.DeadlineExceeded", err)
	}
}

func complete(t *testing.T, q Queue, m *relay.Received) {
	t.Helper()
	if err := q.Complete(testwait.Context(t, 10*time.Second), m); err != nil {
		t.Fatalf("Complete %s: %v", m.ID, err)
	}
}

func testPublishReceive(t *testing.T, open Opener) {
	q, s := openQueue(t, open, defaults)
	before := time.Now()
	m := Msg("pr-1", "call-1")
	m.Properties["number"] = int64(42)
	m.Properties["flag"] = true
	// The trace context crosses the queue in the message, on every backend.
	tc := relay.TraceContext{Parent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", State: "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"}
	tc.Apply(&m)
	send(t, q, m, Msg("pr-2", ""))
	got, err := q.Receive(testwait.Context(t, 10*time.Second), 2)
	if err != nil {
		t.Fatal(err)
	}
	for len(got) < 2 {
		more, err := q.Receive(testwait.Context(t, 10*time.Second), 2-len(got))
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, more...)
	}
	slices.SortFunc(got, func(a, b *relay.Received) int { return int(a.SequenceNumber - b.SequenceNumber) })
	r := got[0]
	if r.ID != m.ID || r.SessionID != m.SessionID || r.Subject != m.Subject || r.ContentType != m.ContentType || string(r.Body) != string(m.Body) {
		t.Errorf("received %+v, want %+v", r.Message, m)
	}
	for k, v := range m.Properties {
		if r.Properties[k] != v {
			t.Errorf("property %s = %v (%T), want %v (%T)", k, r.Properties[k], r.Properties[k], v, v)
		}
	}
	if got := relay.TraceContextOf(relay.RemoteSpanContext(r.Properties)); got != tc {
		t.Errorf("trace context %+v received, want %+v", got, tc)
	}
	if r.DeliveryCount != 1 {
		t.Errorf("DeliveryCount = %d, want 1", r.DeliveryCount)
	}
	if r.LockToken == "" {
		t.Error("no lock token")
	}
	if r.EnqueuedTime.Before(before.Add(-2*time.Second)) || r.EnqueuedTime.After(time.Now().Add(2*time.Second)) {
		t.Errorf("EnqueuedTime %v not around now", r.EnqueuedTime)
	}
	if until := time.Until(r.LockedUntil); until <= 0 || until > s.LockDuration+2*time.Second {
		t.Errorf("LockedUntil in %v, want about %v", until, s.LockDuration)
	}
	if got[1].ID != "pr-2" || got[1].SequenceNumber <= r.SequenceNumber {
		t.Errorf("second message %s seq %d after seq %d", got[1].ID, got[1].SequenceNumber, r.SequenceNumber)
	}
	for _, m := range got {
		complete(t, q, m)
	}
}

func testComplete(t *testing.T, open Opener) {
	q, _ := openQueue(t, open, defaults)
	send(t, q, Msg("c-1", "k"))
	r := receiveOne(t, q, 10*time.Second)
	complete(t, q, r)
	expectNothing(t, q, 500*time.Millisecond)
	if err := q.Complete(testwait.Context(t, 10*time.Second), r); !errors.Is(err, relay.ErrLockLost) {
		t.Errorf("second Complete: err = %v, want ErrLockLost", err)
	}
}

func testAbandon(t *testing.T, open Opener) {
	q, _ := openQueue(t, open, defaults)
	send(t, q, Msg("a-1", "k"))
	r := receiveOne(t, q, 10*time.Second)
	if err := q.Abandon(testwait.Context(t, 10*time.Second), r, 0); err != nil {
		t.Fatal(err)
	}
	r2 := receiveOne(t, q, 10*time.Second)
	if r2.ID != r.ID || r2.SequenceNumber != r.SequenceNumber {
		t.Fatalf("redelivered %s/%d, want %s/%d", r2.ID, r2.SequenceNumber, r.ID, r.SequenceNumber)
	}
	if r2.DeliveryCount != 2 {
		t.Errorf("DeliveryCount after abandon = %d, want 2", r2.DeliveryCount)
	}
	if err := q.Complete(testwait.Context(t, 10*time.Second), r); !errors.Is(err, relay.ErrLockLost) {
		t.Errorf("Complete with the abandoned lock: err = %v, want ErrLockLost", err)
	}
	complete(t, q, r2)
}

func testAbandonDelay(t *testing.T, open Opener) {
	q, _ := openQueue(t, open, defaults)
	send(t, q, Msg("ad-1", "k"), Msg("ad-2", "k"))
	r := receiveOne(t, q, 10*time.Second)
	start := time.Now()
	const delay = 700 * time.Millisecond
	if err := q.Abandon(testwait.Context(t, 10*time.Second), r, delay); err != nil {
		t.Fatal(err)
	}
	// The session stays blocked by its head while the head waits.
	r2 := receiveOne(t, q, 10*time.Second)
	if waited := time.Since(start); waited < delay-50*time.Millisecond {
		t.Errorf("redelivered after %v, want at least %v", waited, delay)
	}
	if r2.ID != "ad-1" || r2.DeliveryCount != 2 {
		t.Errorf("got %s (count %d), want ad-1 (count 2)", r2.ID, r2.DeliveryCount)
	}
	complete(t, q, r2)
	complete(t, q, receiveOne(t, q, 10*time.Second))
}

func testLockExpiry(t *testing.T, open Opener) {
	q, s := openQueue(t, open, Settings{LockDuration: time.Second, MaxDeliveryCount: 10, DuplicateWindow: time.Minute})
	send(t, q, Msg("le-1", "k"))
	r := receiveOne(t, q, 10*time.Second)
	r2 := receiveOne(t, q, s.LockDuration+10*time.Second)
	if r2.ID != r.ID || r2.DeliveryCount != 2 {
		t.Fatalf("after lock expiry got %s count %d, want %s count 2", r2.ID, r2.DeliveryCount, r.ID)
	}
	if time.Since(r.LockedUntil) < -100*time.Millisecond {
		t.Errorf("redelivered %v before the lock expired", -time.Since(r.LockedUntil))
	}
	if err := q.Complete(testwait.Context(t, 10*time.Second), r); !errors.Is(err, relay.ErrLockLost) {
		t.Errorf("Complete with an expired lock: err = %v, want ErrLockLost", err)
	}
	if err := q.RenewLock(testwait.Context(t, 10*time.Second), r); !errors.Is(err, relay.ErrLockLost) {
		t.Errorf("RenewLock of an expired lock: err = %v, want ErrLockLost", err)
	}
	complete(t, q, r2)
}

func testRenewLock(t *testing.T, open Opener) {
	q, s := openQueue(t, open, Settings{LockDuration: time.Second, MaxDeliveryCount: 10, DuplicateWindow: time.Minute})
	send(t, q, Msg("rl-1", ""))
	r := receiveOne(t, q, 10*time.Second)
	first := r.LockedUntil
	deadline := time.Now().Add(s.LockDuration * 2)
	for time.Now().Before(deadline) {
		time.Sleep(s.LockDuration / 3)
		if err := q.RenewLock(testwait.Context(t, 10*time.Second), r); err != nil {
			t.Fatalf("RenewLock: %v", err)
		}
	}
	if !r.LockedUntil.After(first) {
		t.Errorf("LockedUntil not extended: %v then %v", first, r.LockedUntil)
	}
	expectNothing(t, q, s.LockDuration/3)
	complete(t, q, r)
}

func findDeadLetter(t *testing.T, q Queue, id string) relay.DeadLetter {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		dls, err := q.ListDeadLetters(testwait.Context(t, 10*time.Second), 0, 100)
		if err != nil {
			t.Fatalf("ListDeadLetters: %v", err)
		}
		for _, d := range dls {
			if d.ID == id {
				return d
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("message %s not in the dead-letter queue (has %d)", id, len(dls))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func testDeadLetter(t *testing.T, open Opener) {
	q, _ := openQueue(t, open, defaults)
	send(t, q, Msg("dl-1", "k"), Msg("dl-2", "k"))
	r := receiveOne(t, q, 10*time.Second)
	if err := q.DeadLetter(testwait.Context(t, 10*time.Second), r, "BackendRejected", "POST http://backend answered 400 Bad Request"); err != nil {
		t.Fatal(err)
	}
	d := findDeadLetter(t, q, "dl-1")
	if d.Reason != "BackendRejected" || d.Description != "POST http://backend answered 400 Bad Request" {
		t.Errorf("dead letter reason %q description %q", d.Reason, d.Description)
	}
	if d.SessionID != "k" || string(d.Body) != string(r.Body) || d.Properties[relay.PropID] != "dl-1" {
		t.Errorf("dead letter lost content: %+v", d.Message)
	}
	if d.DeliveryCount < 1 {
		t.Errorf("dead letter DeliveryCount = %d", d.DeliveryCount)
	}
	// Dead-lettering the head frees the session.
	r2 := receiveOne(t, q, 10*time.Second)
	if r2.ID != "dl-2" {
		t.Errorf("next = %s, want dl-2", r2.ID)
	}
	complete(t, q, r2)
	expectNothing(t, q, 300*time.Millisecond)
}

func testMaxDelivery(t *testing.T, open Opener) {
	q, s := openQueue(t, open, Settings{LockDuration: defaults.LockDuration, MaxDeliveryCount: 3, DuplicateWindow: time.Minute})
	send(t, q, Msg("md-1", "k"), Msg("md-2", "k"))
	for i := 1; i <= s.MaxDeliveryCount; i++ {
		r := receiveOne(t, q, 10*time.Second)
		if r.ID != "md-1" || r.DeliveryCount != i {
			t.Fatalf("delivery %d: got %s count %d", i, r.ID, r.DeliveryCount)
		}
		if err := q.Abandon(testwait.Context(t, 10*time.Second), r, 0); err != nil {
			t.Fatal(err)
		}
	}
	r := receiveOne(t, q, 10*time.Second)
	if r.ID != "md-2" {
		t.Fatalf("after %d deliveries got %s (count %d), want md-2", s.MaxDeliveryCount, r.ID, r.DeliveryCount)
	}
	complete(t, q, r)
	d := findDeadLetter(t, q, "md-1")
	if d.Reason != relay.ReasonMaxDelivery {
		t.Errorf("reason = %q, want %q", d.Reason, relay.ReasonMaxDelivery)
	}
	if d.Description == "" {
		t.Error("no description")
	}
}

func testDuplicates(t *testing.T, open Opener) {
	q, _ := openQueue(t, open, defaults)
	send(t, q, Msg("dup-1", "k"), Msg("dup-1", "k"))
	send(t, q, Msg("dup-1", "k"), Msg("dup-2", "k"))
	var ids []string
	for range 2 {
		r := receiveOne(t, q, 10*time.Second)
		ids = append(ids, r.ID)
		complete(t, q, r)
	}
	if !slices.Equal(ids, []string{"dup-1", "dup-2"}) {
		t.Errorf("got %v, want [dup-1 dup-2]", ids)
	}
	// Still a duplicate after the first copy was completed.
	send(t, q, Msg("dup-1", "k"))
	expectNothing(t, q, 500*time.Millisecond)
}

func testSessionOrder(t *testing.T, open Opener) {
	q, _ := openQueue(t, open, defaults)
	const sessions, perSession = 6, 15
	var batch []relay.Message
	for i := range perSession {
		for s := range sessions {
			batch = append(batch, Msg(fmt.Sprintf("s%d-%02d", s, i), fmt.Sprintf("session-%d", s)))
		}
	}
	// Several sends, so the order spans commits.
	for len(batch) > 0 {
		n := min(len(batch), 7)
		send(t, q, batch[:n]...)
		batch = batch[n:]
	}
	var (
		mu       sync.Mutex
		inFlight = map[string]string{}
		order    = map[string][]string{}
		done     = 0
		failures []string
	)
	ctx := testwait.Context(t, 60*time.Second)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				finished := done == sessions*perSession
				mu.Unlock()
				if finished {
					return
				}
				rctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
				msgs, err := q.Receive(rctx, 3)
				cancel()
				if err != nil {
					if ctx.Err() != nil {
						return
					}
					continue
				}
				for _, m := range msgs {
					mu.Lock()
					if other, busy := inFlight[m.SessionID]; busy {
						failures = append(failures, fmt.Sprintf("%s handed out while %s of the same session was in flight", m.ID, other))
					}
					inFlight[m.SessionID] = m.ID
					mu.Unlock()
				}
				for _, m := range msgs {
					time.Sleep(time.Millisecond)
					mu.Lock()
					delete(inFlight, m.SessionID)
					order[m.SessionID] = append(order[m.SessionID], m.ID)
					done++
					mu.Unlock()
					if err := q.Complete(ctx, m); err != nil {
						mu.Lock()
						failures = append(failures, fmt.Sprintf("complete %s: %v", m.ID, err))
						mu.Unlock()
					}
				}
			}
		}()
	}
	wg.Wait()
	for _, f := range failures {
		t.Error(f)
	}
	for s := range sessions {
		key := fmt.Sprintf("session-%d", s)
		got := order[key]
		if len(got) != perSession {
			t.Errorf("%s: %d delivered, want %d", key, len(got), perSession)
			continue
		}
		if !slices.IsSorted(got) {
			t.Errorf("%s delivered out of order: %v", key, got)
		}
	}
}

func testSessionHead(t *testing.T, open Opener) {
	q, _ := openQueue(t, open, defaults)
	send(t, q, Msg("h-1", "k"), Msg("h-2", "k"), Msg("other-1", "j"))
	msgs, err := q.Receive(testwait.Context(t, 10*time.Second), 10)
	if err != nil {
		t.Fatal(err)
	}
	for len(msgs) < 2 {
		more, err := q.Receive(testwait.Context(t, 10*time.Second), 10)
		if err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, more...)
	}
	ids := []string{}
	for _, m := range msgs {
		ids = append(ids, m.ID)
	}
	slices.Sort(ids)
	if !slices.Equal(ids, []string{"h-1", "other-1"}) {
		t.Fatalf("first receive got %v, want the head of each session [h-1 other-1]", ids)
	}
	// h-2 waits while h-1 is locked, and is next once h-1 is abandoned
	// and then completed.
	expectNothing(t, q, 300*time.Millisecond)
	for _, m := range msgs {
		if m.ID == "h-1" {
			if err := q.Abandon(testwait.Context(t, 10*time.Second), m, 0); err != nil {
				t.Fatal(err)
			}
		} else {
			complete(t, q, m)
		}
	}
	r := receiveOne(t, q, 10*time.Second)
	if r.ID != "h-1" {
		t.Fatalf("after abandoning the head got %s, want h-1 again", r.ID)
	}
	complete(t, q, r)
	if r := receiveOne(t, q, 10*time.Second); r.ID != "h-2" {
		t.Fatalf("got %s, want h-2", r.ID)
	} else {
		complete(t, q, r)
	}
}

func testNoSession(t *testing.T, open Opener) {
	q, _ := openQueue(t, open, defaults)
	var batch []relay.Message
	for i := range 5 {
		batch = append(batch, Msg(fmt.Sprintf("ns-%d", i), ""))
	}
	send(t, q, batch...)
	var got []*relay.Received
	for len(got) < 5 {
		msgs, err := q.Receive(testwait.Context(t, 10*time.Second), 5)
		if err != nil {
			t.Fatalf("with %d of 5 in flight: %v", len(got), err)
		}
		got = append(got, msgs...)
	}
	for _, m := range got {
		complete(t, q, m)
	}
}

func testReceiveContext(t *testing.T, open Opener) {
	q, _ := openQueue(t, open, defaults)
	start := time.Now()
	expectNothing(t, q, 300*time.Millisecond)
	if waited := time.Since(start); waited > 5*time.Second {
		t.Errorf("Receive returned %v after its context ended", waited)
	}
	// A message sent while a receiver waits wakes it promptly.
	got := make(chan time.Duration, 1)
	go func() {
		msgs, err := q.Receive(testwait.Context(t, 10*time.Second), 1)
		if err != nil || len(msgs) != 1 {
			got <- -1
			return
		}
		got <- time.Since(msgs[0].EnqueuedTime)
		q.Complete(context.Background(), msgs[0])
	}()
	time.Sleep(200 * time.Millisecond)
	send(t, q, Msg("wake-1", ""))
	if d := <-got; d < 0 {
		t.Fatal("waiting receiver got nothing")
	} else if d > 750*time.Millisecond {
		t.Errorf("waiting receiver woke %v after the send", d)
	}
}

// deadLetterAll receives the messages with the given IDs and dead-letters
// each with reason "Test" and its ID as description.
func deadLetterAll(t *testing.T, q Queue, ids ...string) {
	t.Helper()
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	for len(want) > 0 {
		msgs, err := q.Receive(testwait.Context(t, 10*time.Second), len(want))
		if err != nil {
			t.Fatalf("Receive: %v", err)
		}
		for _, m := range msgs {
			if !want[m.ID] {
				t.Fatalf("received %s, want one of %v", m.ID, want)
			}
			delete(want, m.ID)
			if err := q.DeadLetter(testwait.Context(t, 10*time.Second), m, "Test", m.ID); err != nil {
				t.Fatalf("DeadLetter %s: %v", m.ID, err)
			}
		}
	}
}

// deadLetterSeqs lists the dead-letter queue and returns the sequence
// numbers of the given message IDs.
func deadLetterSeqs(t *testing.T, q Queue, ids ...string) map[string]int64 {
	t.Helper()
	for _, id := range ids {
		findDeadLetter(t, q, id) // waits for it
	}
	dls, err := q.ListDeadLetters(testwait.Context(t, 10*time.Second), 0, 100)
	if err != nil {
		t.Fatalf("ListDeadLetters: %v", err)
	}
	seqs := map[string]int64{}
	var last int64
	for _, d := range dls {
		if d.SequenceNumber <= last {
			t.Errorf("ListDeadLetters out of order: %d after %d", d.SequenceNumber, last)
		}
		last = d.SequenceNumber
		seqs[d.ID] = d.SequenceNumber
	}
	return seqs
}

func take(t *testing.T, q Queue, seqs ...int64) map[string]*relay.DeadLetterLock {
	t.Helper()
	locks, err := q.TakeDeadLetters(testwait.Context(t, 20*time.Second), seqs)
	if err != nil {
		t.Fatalf("TakeDeadLetters(%v): %v", seqs, err)
	}
	out := map[string]*relay.DeadLetterLock{}
	for _, l := range locks {
		out[l.ID] = l
	}
	return out
}

func testDeadLetterTake(t *testing.T, open Opener) {
	q, _ := openQueue(t, open, defaults)
	send(t, q, Msg("dlt-1", "a"), Msg("dlt-2", "b"), Msg("dlt-3", "c"))
	deadLetterAll(t, q, "dlt-1", "dlt-2", "dlt-3")
	seqs := deadLetterSeqs(t, q, "dlt-1", "dlt-2", "dlt-3")

	// Take two: they come with their content and reason.
	locks := take(t, q, seqs["dlt-1"], seqs["dlt-2"])
	if len(locks) != 2 || locks["dlt-1"] == nil || locks["dlt-2"] == nil {
		t.Fatalf("took %v, want dlt-1 and dlt-2", locks)
	}
	for id, l := range locks {
		if l.Reason != "Test" || l.Description != id || l.SequenceNumber != seqs[id] || l.Properties[relay.PropID] != id || l.SessionID == "" {
			t.Errorf("taken %s: %+v", id, l.DeadLetter)
		}
	}
	// A taken message cannot be taken again.
	if again := take(t, q, seqs["dlt-1"]); len(again) != 0 {
		t.Errorf("took dlt-1 a second time while it was taken: %v", again)
	}
	// Released, it can.
	if err := q.ReleaseDeadLetter(testwait.Context(t, 10*time.Second), locks["dlt-1"]); err != nil {
		t.Fatalf("ReleaseDeadLetter: %v", err)
	}
	retaken := take(t, q, seqs["dlt-1"])
	if retaken["dlt-1"] == nil {
		t.Fatalf("after its release dlt-1 could not be taken: %v", retaken)
	}
	// Completed, it is gone from the listing; the others stay.
	if err := q.CompleteDeadLetter(testwait.Context(t, 10*time.Second), locks["dlt-2"]); err != nil {
		t.Fatalf("CompleteDeadLetter: %v", err)
	}
	if err := q.CompleteDeadLetter(testwait.Context(t, 10*time.Second), retaken["dlt-1"]); err != nil {
		t.Fatalf("CompleteDeadLetter after a release and a new take: %v", err)
	}
	left := deadLetterSeqs(t, q, "dlt-3")
	if _, ok := left["dlt-1"]; ok {
		t.Errorf("dlt-1 still listed after its removal: %v", left)
	}
	if _, ok := left["dlt-2"]; ok {
		t.Errorf("dlt-2 still listed after its removal: %v", left)
	}
	// A removed message cannot be taken.
	if gone := take(t, q, seqs["dlt-2"], seqs["dlt-3"]); len(gone) != 1 || gone["dlt-3"] == nil {
		t.Errorf("took %v, want only dlt-3", gone)
	} else if err := q.ReleaseDeadLetter(testwait.Context(t, 10*time.Second), gone["dlt-3"]); err != nil {
		t.Errorf("ReleaseDeadLetter: %v", err)
	}
}

func testClose(t *testing.T, open Opener) {
	q, _ := openQueue(t, open, defaults)
	errc := make(chan error, 1)
	go func() {
		_, err := q.Receive(context.Background(), 1)
		errc <- err
	}()
	time.Sleep(200 * time.Millisecond)
	if err := q.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, relay.ErrClosed) {
			t.Errorf("blocked Receive returned %v, want ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("blocked Receive did not return after Close")
	}
	if err := q.SendBatch(testwait.Context(t, 5*time.Second), []relay.Message{Msg("after-close", "")}); !errors.Is(err, relay.ErrClosed) {
		t.Errorf("SendBatch after Close: %v, want ErrClosed", err)
	}
	if _, err := q.Receive(testwait.Context(t, 5*time.Second), 1); !errors.Is(err, relay.ErrClosed) {
		t.Errorf("Receive after Close: %v, want ErrClosed", err)
	}
	if err := q.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// DeadLetterQueue is the dead-letter side of a queue, as the replay and
// purge tooling uses it.
type DeadLetterQueue interface {
	ListDeadLetters(ctx context.Context, after int64, limit int) ([]relay.DeadLetter, error)
	TakeDeadLetters(ctx context.Context, seqs []int64) ([]*relay.DeadLetterLock, error)
	CompleteDeadLetter(ctx context.Context, l *relay.DeadLetterLock) error
	ReleaseDeadLetter(ctx context.Context, l *relay.DeadLetterLock) error
	SendBatch(ctx context.Context, msgs []relay.Message) error
}

// ErrInjected is the error FaultyDeadLetters fails calls with.
var ErrInjected = errors.New("relaytest: injected failure")

// Dead-letter operations FaultyDeadLetters can fail.
const (
	OpTake     = "take"
	OpComplete = "complete"
	OpRelease  = "release"
	OpSend     = "send"
)

// FaultyDeadLetters wraps a real queue's dead-letter side and fails chosen
// calls with ErrInjected before they reach the queue, as a broken
// connection would: a failed complete or release leaves the message
// locked, a failed send sends nothing.
type FaultyDeadLetters struct {
	DeadLetterQueue
	// Fail reports whether call n (counting from 1) of op fails.
	Fail func(op string, n int) bool

	mu    sync.Mutex
	calls map[string]int
}

// Calls returns how many times op was called.
func (f *FaultyDeadLetters) Calls(op string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[op]
}

func (f *FaultyDeadLetters) fail(op string) error {
	f.mu.Lock()
	if f.calls == nil {
		f.calls = map[string]int{}
	}
	f.calls[op]++
	n := f.calls[op]
	f.mu.Unlock()
	if f.Fail != nil && f.Fail(op, n) {
		return fmt.Errorf("%s call %d: %w", op, n, ErrInjected)
	}
	return nil
}

// TakeDeadLetters fails or takes.
func (f *FaultyDeadLetters) TakeDeadLetters(ctx context.Context, seqs []int64) ([]*relay.DeadLetterLock, error) {
	if err := f.fail(OpTake); err != nil {
		return nil, err
	}
	return f.DeadLetterQueue.TakeDeadLetters(ctx, seqs)
}

// CompleteDeadLetter fails or completes.
func (f *FaultyDeadLetters) CompleteDeadLetter(ctx context.Context, l *relay.DeadLetterLock) error {
	if err := f.fail(OpComplete); err != nil {
		return err
	}
	return f.DeadLetterQueue.CompleteDeadLetter(ctx, l)
}

// ReleaseDeadLetter fails or releases.
func (f *FaultyDeadLetters) ReleaseDeadLetter(ctx context.Context, l *relay.DeadLetterLock) error {
	if err := f.fail(OpRelease); err != nil {
		return err
	}
	return f.DeadLetterQueue.ReleaseDeadLetter(ctx, l)
}

// SendBatch fails or sends.
func (f *FaultyDeadLetters) SendBatch(ctx context.Context, msgs []relay.Message) error {
	if err := f.fail(OpSend); err != nil {
		return err
	}
	return f.DeadLetterQueue.SendBatch(ctx, msgs)
}
