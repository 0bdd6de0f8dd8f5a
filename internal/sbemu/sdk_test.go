package sbemu_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"

	"github.com/hookbridge/hookbridge/internal/sbemu"
	"github.com/hookbridge/hookbridge/internal/sbemu/sbemutest"
	"github.com/hookbridge/hookbridge/internal/testwait"
)

// ctx bounds a blocking call of these tests.
func ctx(t *testing.T) context.Context { return testwait.Context(t, 20*time.Second) }

func TestSendReceiveComplete(t *testing.T) {
	s := sbemutest.NewServer(t, sbemu.QueueConfig{Name: "q"})
	c := s.NewClient(t)
	snd, err := c.NewSender("q", nil)
	if err != nil {
		t.Fatal(err)
	}
	id := "m1"
	if err := snd.SendMessage(ctx(t), &azservicebus.Message{MessageID: &id, Body: []byte("hello"),
		ApplicationProperties: map[string]any{"k": "v"}}, nil); err != nil {
		t.Fatalf("send: %v", err)
	}
	rcv, err := c.NewReceiverForQueue("q", nil)
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := rcv.ReceiveMessages(ctx(t), 1, nil)
	if err != nil {
		t.Fatalf("receive: %v", err)
	}
	if len(msgs) != 1 || string(msgs[0].Body) != "hello" || msgs[0].MessageID != "m1" || msgs[0].DeliveryCount != 1 || *msgs[0].SequenceNumber != 1 {
		t.Fatalf("got %+v", msgs[0])
	}
	if err := rcv.CompleteMessage(ctx(t), msgs[0], nil); err != nil {
		t.Fatalf("complete: %v", err)
	}
	st, _ := s.Stats("q")
	if st != (sbemu.QueueStats{}) {
		t.Errorf("stats after complete: %+v", st)
	}
}

func TestSettlementsAndDeadLetters(t *testing.T) {
	s := sbemutest.NewServer(t, sbemu.QueueConfig{Name: "q", MaxDeliveryCount: 2, LockDuration: 5 * time.Second})
	c := s.NewClient(t)
	snd, _ := c.NewSender("q", nil)
	batch, err := snd.NewMessageBatch(ctx(t), nil)
	if err != nil {
		t.Fatalf("new batch: %v", err)
	}
	for _, id := range []string{"a", "b", "c"} {
		id := id
		if err := batch.AddMessage(&azservicebus.Message{MessageID: &id, Body: []byte(id)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := snd.SendMessageBatch(ctx(t), batch, nil); err != nil {
		t.Fatalf("send batch: %v", err)
	}
	rcv, _ := c.NewReceiverForQueue("q", nil)
	msgs, err := rcv.ReceiveMessages(ctx(t), 3, nil)
	if err != nil || len(msgs) == 0 {
		t.Fatalf("receive: %v %d", err, len(msgs))
	}
	for len(msgs) < 3 {
		more, err := rcv.ReceiveMessages(ctx(t), 3-len(msgs), nil)
		if err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, more...)
	}
	// a: renew then complete; b: dead-letter; c: abandon twice → max delivery.
	if err := rcv.RenewMessageLock(ctx(t), msgs[0], nil); err != nil {
		t.Fatalf("renew: %v", err)
	}
	if err := rcv.CompleteMessage(ctx(t), msgs[0], nil); err != nil {
		t.Fatalf("complete: %v", err)
	}
	reason, desc := "Bad", "really bad"
	if err := rcv.DeadLetterMessage(ctx(t), msgs[1], &azservicebus.DeadLetterOptions{Reason: &reason, ErrorDescription: &desc}); err != nil {
		t.Fatalf("dead-letter: %v", err)
	}
	if err := rcv.AbandonMessage(ctx(t), msgs[2], nil); err != nil {
		t.Fatalf("abandon: %v", err)
	}
	again, err := rcv.ReceiveMessages(ctx(t), 1, nil)
	if err != nil || again[0].MessageID != "c" || again[0].DeliveryCount != 2 {
		t.Fatalf("redelivery: %v %+v", err, again)
	}
	if err := rcv.AbandonMessage(ctx(t), again[0], nil); err != nil {
		t.Fatalf("abandon 2: %v", err)
	}
	dlq, _ := c.NewReceiverForQueue("q", &azservicebus.ReceiverOptions{SubQueue: azservicebus.SubQueueDeadLetter})
	peeked, err := dlq.PeekMessages(ctx(t), 10, nil)
	if err != nil || len(peeked) != 2 {
		t.Fatalf("peek DLQ: %v %d", err, len(peeked))
	}
	dls, err := dlq.ReceiveMessages(ctx(t), 2, nil)
	if err != nil {
		t.Fatal(err)
	}
	for len(dls) < 2 {
		more, _ := dlq.ReceiveMessages(ctx(t), 1, nil)
		dls = append(dls, more...)
	}
	got := map[string]string{}
	for _, d := range dls {
		got[d.MessageID] = *d.DeadLetterReason
		if err := dlq.CompleteMessage(ctx(t), d, nil); err != nil {
			t.Fatal(err)
		}
	}
	if got["b"] != "Bad" || got["c"] != "MaxDeliveryCountExceeded" {
		t.Errorf("dead letters: %v", got)
	}
}

func TestSessions(t *testing.T) {
	s := sbemutest.NewServer(t, sbemu.QueueConfig{Name: "sq", RequiresSession: true, LockDuration: 5 * time.Second})
	c := s.NewClient(t)
	snd, _ := c.NewSender("sq", nil)
	for i, sid := range []string{"s1", "s2", "s1"} {
		sid := sid
		id := string(rune('a' + i))
		if err := snd.SendMessage(ctx(t), &azservicebus.Message{MessageID: &id, SessionID: &sid, Body: []byte(id)}, nil); err != nil {
			t.Fatalf("send: %v", err)
		}
	}
	noSession := "x"
	if err := snd.SendMessage(ctx(t), &azservicebus.Message{MessageID: &noSession}, nil); err == nil {
		t.Error("a message without a session was accepted")
	}
	r1, err := c.AcceptNextSessionForQueue(ctx(t), "sq", nil)
	if err != nil {
		t.Fatalf("accept next: %v", err)
	}
	if r1.SessionID() != "s1" {
		t.Errorf("first session %q", r1.SessionID())
	}
	if _, err := c.AcceptSessionForQueue(ctx(t), "sq", "s1", nil); err == nil {
		t.Error("a locked session was accepted twice")
	}
	m, err := r1.ReceiveMessages(ctx(t), 1, nil)
	if err != nil || m[0].MessageID != "a" {
		t.Fatalf("s1 first: %v %+v", err, m)
	}
	if err := r1.RenewSessionLock(ctx(t), nil); err != nil {
		t.Fatalf("renew session: %v", err)
	}
	if err := r1.SetSessionState(ctx(t), []byte("state"), nil); err != nil {
		t.Fatal(err)
	}
	if st, err := r1.GetSessionState(ctx(t), nil); err != nil || string(st) != "state" {
		t.Fatalf("state %q %v", st, err)
	}
	r1.CompleteMessage(ctx(t), m[0], nil)
	m, _ = r1.ReceiveMessages(ctx(t), 1, nil)
	if m[0].MessageID != "c" {
		t.Errorf("s1 second: %s", m[0].MessageID)
	}
	r1.CompleteMessage(ctx(t), m[0], nil)
	r2, err := c.AcceptNextSessionForQueue(ctx(t), "sq", nil)
	if err != nil || r2.SessionID() != "s2" {
		t.Fatalf("second session: %v", err)
	}
	r2.Close(ctx(t))
	r1.Close(ctx(t))
	tctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	r3, err := c.AcceptNextSessionForQueue(tctx, "sq", nil)
	if err != nil {
		t.Fatalf("s2 again after close: %v", err)
	}
	if r3.SessionID() != "s2" {
		t.Errorf("got session %s", r3.SessionID())
	}
}

func TestLargeMessagesSpanFrames(t *testing.T) {
	s := sbemutest.NewServer(t, sbemu.QueueConfig{Name: "q"})
	c := s.NewClient(t)
	snd, _ := c.NewSender("q", nil)
	big := make([]byte, 200_000) // several 64 KB frames each way
	for i := range big {
		big[i] = byte(i)
	}
	id := "big"
	if err := snd.SendMessage(ctx(t), &azservicebus.Message{MessageID: &id, Body: big}, nil); err != nil {
		t.Fatalf("send: %v", err)
	}
	rcv, _ := c.NewReceiverForQueue("q", nil)
	msgs, err := rcv.ReceiveMessages(ctx(t), 1, nil)
	if err != nil || len(msgs[0].Body) != len(big) {
		t.Fatalf("receive: %v", err)
	}
	for i := range big {
		if msgs[0].Body[i] != big[i] {
			t.Fatalf("byte %d differs", i)
		}
	}
	tooBig := make([]byte, 300_000)
	if err := snd.SendMessage(ctx(t), &azservicebus.Message{Body: tooBig}, nil); err == nil {
		t.Error("a 300 KB message was accepted by a 256 KB queue")
	}
}

func TestReceiveAndDeleteDeferScheduleTTL(t *testing.T) {
	s := sbemutest.NewServer(t, sbemu.QueueConfig{Name: "q"}, sbemu.QueueConfig{Name: "ttl", DefaultMessageTimeToLive: 200 * time.Millisecond, DeadLetteringOnMessageExpiration: true})
	c := s.NewClient(t)
	snd, _ := c.NewSender("q", nil)
	for _, id := range []string{"d1", "d2"} {
		id := id
		snd.SendMessage(ctx(t), &azservicebus.Message{MessageID: &id}, nil)
	}
	// Receive-and-delete: gone once received.
	rad, _ := c.NewReceiverForQueue("q", &azservicebus.ReceiverOptions{ReceiveMode: azservicebus.ReceiveModeReceiveAndDelete})
	m, err := rad.ReceiveMessages(ctx(t), 1, nil)
	if err != nil || m[0].MessageID != "d1" {
		t.Fatalf("receive and delete: %v", err)
	}
	rad.Close(ctx(t))
	// Defer, then fetch by sequence number.
	rcv, _ := c.NewReceiverForQueue("q", nil)
	m, _ = rcv.ReceiveMessages(ctx(t), 1, nil)
	if m[0].MessageID != "d2" {
		t.Fatalf("got %s, want d2 (d1 was deleted)", m[0].MessageID)
	}
	if err := rcv.DeferMessage(ctx(t), m[0], nil); err != nil {
		t.Fatalf("defer: %v", err)
	}
	if st, _ := s.Stats("q"); st.Deferred != 1 {
		t.Errorf("stats %+v", st)
	}
	deferred, err := rcv.ReceiveDeferredMessages(ctx(t), []int64{*m[0].SequenceNumber}, nil)
	if err != nil || len(deferred) != 1 {
		t.Fatalf("receive deferred: %v %d", err, len(deferred))
	}
	if err := rcv.CompleteMessage(ctx(t), deferred[0], nil); err != nil {
		t.Fatalf("complete deferred: %v", err)
	}
	// Scheduled messages appear at their time; cancelled ones never.
	seqs, err := snd.ScheduleMessages(ctx(t), []*azservicebus.Message{{Body: []byte("later")}, {Body: []byte("never")}}, time.Now().Add(300*time.Millisecond), nil)
	if err != nil || len(seqs) != 2 {
		t.Fatalf("schedule: %v %v", err, seqs)
	}
	if err := snd.CancelScheduledMessages(ctx(t), seqs[1:], nil); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	m, err = rcv.ReceiveMessages(ctx(t), 1, nil)
	if err != nil || string(m[0].Body) != "later" || time.Since(start) < 200*time.Millisecond {
		t.Fatalf("scheduled: %v after %v", err, time.Since(start))
	}
	rcv.CompleteMessage(ctx(t), m[0], nil)
	// Time to live: expired and dead-lettered.
	ts, _ := c.NewSender("ttl", nil)
	id := "old"
	ts.SendMessage(ctx(t), &azservicebus.Message{MessageID: &id}, nil)
	time.Sleep(400 * time.Millisecond)
	dlq, _ := c.NewReceiverForQueue("ttl", &azservicebus.ReceiverOptions{SubQueue: azservicebus.SubQueueDeadLetter})
	dl, err := dlq.ReceiveMessages(ctx(t), 1, nil)
	if err != nil || dl[0].MessageID != "old" || *dl[0].DeadLetterReason != "TTLExpiredException" {
		t.Fatalf("expired message: %v %+v", err, dl)
	}
}

func TestSettlementFallsBackToManagementAfterDetach(t *testing.T) {
	s := sbemutest.NewServer(t, sbemu.QueueConfig{Name: "q", LockDuration: 10 * time.Second})
	c := s.NewClient(t)
	snd, _ := c.NewSender("q", nil)
	id := "m"
	snd.SendMessage(ctx(t), &azservicebus.Message{MessageID: &id}, nil)
	rcv, _ := c.NewReceiverForQueue("q", nil)
	m, _ := rcv.ReceiveMessages(ctx(t), 1, nil)
	if n := s.DetachLinks("q"); n == 0 {
		t.Fatal("nothing detached")
	}
	if err := rcv.CompleteMessage(ctx(t), m[0], nil); err != nil {
		t.Fatalf("complete after the link was detached: %v", err)
	}
	if st, _ := s.Stats("q"); st.Active+st.Locked != 0 {
		t.Errorf("stats %+v", st)
	}
	settledByManagement := false
	for _, e := range s.Events() {
		if e.Kind == sbemu.EventManagement && strings.Contains(e.Detail, "update-disposition 200") {
			settledByManagement = true
		}
	}
	if !settledByManagement {
		t.Error("the settlement did not go through $management")
	}
}

func TestSASCheckAndLeaks(t *testing.T) {
	s := sbemutest.NewServerConfig(t, sbemu.Config{Queues: []sbemu.QueueConfig{{Name: "q"}}, SharedAccessKey: "correct-key"})
	s.ExpectNoLeaks()
	good, _ := azservicebus.NewClientFromConnectionString(s.ConnectionString(), nil)
	snd, _ := good.NewSender("q", nil)
	if err := snd.SendMessage(ctx(t), &azservicebus.Message{Body: []byte("x")}, nil); err != nil {
		t.Fatalf("with the right key: %v", err)
	}
	good.Close(ctx(t))
	bad, _ := azservicebus.NewClientFromConnectionString(strings.Replace(s.ConnectionString(), "correct-key", "wrong-key", 1),
		&azservicebus.ClientOptions{RetryOptions: azservicebus.RetryOptions{MaxRetries: -1}})
	bsnd, _ := bad.NewSender("q", nil)
	if err := bsnd.SendMessage(ctx(t), &azservicebus.Message{Body: []byte("x")}, nil); err == nil {
		t.Error("a wrong key was accepted")
	}
	bad.Close(ctx(t))
}

// TestSessionLockReleasesItsMessages: messages received through a session
// are locked by the session lock, so they go back with it, first in line
// for the session's next holder. Closing the session does not count the
// delivery; losing the lock to expiry does; a lost connection keeps the
// session locked until then.
func TestSessionLockReleasesItsMessages(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		// end ends the first holder's session without settling.
		end func(s *sbemutest.Server, r *azservicebus.SessionReceiver) error
		// lockedUntilExpiry: the session cannot be accepted until its lock
		// expires.
		lockedUntilExpiry bool
		wantCount         uint32
	}{
		{"closed", func(_ *sbemutest.Server, r *azservicebus.SessionReceiver) error { return r.Close(context.Background()) }, false, 1},
		{"detached by the server", func(s *sbemutest.Server, _ *azservicebus.SessionReceiver) error {
			s.DetachLinks("sq")
			return nil
		}, false, 1},
		{"lock expired", func(s *sbemutest.Server, _ *azservicebus.SessionReceiver) error {
			s.ExpireLocks("sq")
			return nil
		}, false, 2},
		{"connection lost", func(s *sbemutest.Server, _ *azservicebus.SessionReceiver) error {
			s.CloseConnections(true)
			return nil
		}, true, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := sbemutest.NewServer(t, sbemu.QueueConfig{Name: "sq", RequiresSession: true, LockDuration: 2 * time.Second})
			first := s.NewClient(t)
			snd, _ := first.NewSender("sq", nil)
			sid := "call-1"
			for _, id := range []string{"1", "2", "3"} {
				if err := snd.SendMessage(ctx(t), &azservicebus.Message{MessageID: &id, SessionID: &sid}, nil); err != nil {
					t.Fatalf("send: %v", err)
				}
			}
			r1, err := first.AcceptSessionForQueue(ctx(t), "sq", sid, nil)
			if err != nil {
				t.Fatal(err)
			}
			if m, err := r1.ReceiveMessages(ctx(t), 1, nil); err != nil || m[0].MessageID != "1" {
				t.Fatalf("first holder: %v %v", m, err)
			}
			if err := tc.end(s, r1); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			second := s.NewClient(t)
			var r2 *azservicebus.SessionReceiver
			for {
				r2, err = second.AcceptSessionForQueue(ctx(t), "sq", sid, nil)
				if err == nil {
					break
				}
				if !tc.lockedUntilExpiry || time.Since(start) > 10*time.Second {
					t.Fatalf("accept the session again: %v", err)
				}
				time.Sleep(50 * time.Millisecond)
			}
			if waited := time.Since(start); tc.lockedUntilExpiry != (waited > time.Second) {
				t.Errorf("the session was free again after %v; want it held until its lock expires: %v", waited, tc.lockedUntilExpiry)
			}
			var got []string
			for len(got) < 3 {
				msgs, err := r2.ReceiveMessages(ctx(t), 3-len(got), nil)
				if err != nil {
					t.Fatalf("second holder: %v", err)
				}
				for _, m := range msgs {
					if m.MessageID == "1" && m.DeliveryCount != tc.wantCount {
						t.Errorf("message 1 redelivered with delivery count %d, want %d", m.DeliveryCount, tc.wantCount)
					}
					got = append(got, m.MessageID)
					if err := r2.CompleteMessage(ctx(t), m, nil); err != nil {
						t.Fatalf("complete %s: %v", m.MessageID, err)
					}
				}
			}
			if strings.Join(got, ",") != "1,2,3" {
				t.Errorf("the next holder got %v, want 1,2,3", got)
			}
		})
	}
}

// TestManagementAsANamespaceAnswers covers $management behaviour beyond the
// happy path: session listing, peeking within a session, receiving a
// deferred message that is not there, and properties modified on abandon
// and dead-letter.
func TestManagementAsANamespaceAnswers(t *testing.T) {
	t.Parallel()
	s := sbemutest.NewServer(t, sbemu.QueueConfig{Name: "sq", RequiresSession: true}, sbemu.QueueConfig{Name: "q"})
	c := s.NewClient(t)
	snd, _ := c.NewSender("sq", nil)
	for _, m := range [][2]string{{"a1", "a"}, {"b1", "b"}, {"a2", "a"}, {"c1", "c"}} {
		id, sid := m[0], m[1]
		if err := snd.SendMessage(ctx(t), &azservicebus.Message{MessageID: &id, SessionID: &sid}, nil); err != nil {
			t.Fatal(err)
		}
	}

	var sessions []string
	pager := c.NewListSessionsForQueuePager("sq", nil)
	for pager.More() {
		page, err := pager.NextPage(ctx(t))
		if err != nil {
			t.Fatalf("list sessions: %v", err)
		}
		sessions = append(sessions, page.Sessions...)
	}
	if strings.Join(sessions, ",") != "a,b,c" {
		t.Errorf("sessions %v, want a,b,c", sessions)
	}

	ra, err := c.AcceptSessionForQueue(ctx(t), "sq", "a", nil)
	if err != nil {
		t.Fatal(err)
	}
	peeked, err := ra.PeekMessages(ctx(t), 10, nil)
	if err != nil {
		t.Fatalf("peek in session a: %v", err)
	}
	var ids []string
	for _, m := range peeked {
		ids = append(ids, m.MessageID)
	}
	if strings.Join(ids, ",") != "a1,a2" {
		t.Errorf("peek within session a returned %v, want a1,a2", ids)
	}
	if _, err := ra.ReceiveDeferredMessages(ctx(t), []int64{1}, nil); err == nil {
		t.Error("receiving a message that was never deferred succeeded")
	}

	// Properties to modify, on abandon (through the link) and dead-letter.
	qs, _ := c.NewSender("q", nil)
	if err := qs.SendMessage(ctx(t), &azservicebus.Message{ApplicationProperties: map[string]any{"keep": "me"}}, nil); err != nil {
		t.Fatal(err)
	}
	rcv, _ := c.NewReceiverForQueue("q", nil)
	m, err := rcv.ReceiveMessages(ctx(t), 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := rcv.AbandonMessage(ctx(t), m[0], &azservicebus.AbandonMessageOptions{PropertiesToModify: map[string]any{"attempt": int64(1)}}); err != nil {
		t.Fatal(err)
	}
	m, err = rcv.ReceiveMessages(ctx(t), 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	if p := m[0].ApplicationProperties; p["keep"] != "me" || p["attempt"] != int64(1) {
		t.Errorf("after abandon with properties to modify: %v", p)
	}
	reason := "Poison"
	if err := rcv.DeadLetterMessage(ctx(t), m[0], &azservicebus.DeadLetterOptions{Reason: &reason,
		PropertiesToModify: map[string]any{"by": "test"}}); err != nil {
		t.Fatal(err)
	}
	dlq, _ := c.NewReceiverForQueue("q", &azservicebus.ReceiverOptions{SubQueue: azservicebus.SubQueueDeadLetter})
	d, err := dlq.ReceiveMessages(ctx(t), 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	if p := d[0].ApplicationProperties; p["by"] != "test" || p["attempt"] != int64(1) || *d[0].DeadLetterReason != "Poison" {
		t.Errorf("dead letter's properties: %v", p)
	}
}

// TestSubQueuePaths: the dead-letter queues open under any case, the
// transfer dead-letter queue included (empty: the emulator does not
// forward).
func TestSubQueuePaths(t *testing.T) {
	t.Parallel()
	s := sbemutest.NewServer(t, sbemu.QueueConfig{Name: "Orders"})
	c := s.NewClient(t)
	for _, tc := range []struct {
		queue string
		sub   azservicebus.SubQueue
	}{
		{"orders", azservicebus.SubQueueDeadLetter},
		{"ORDERS", azservicebus.SubQueueTransfer},
	} {
		r, err := c.NewReceiverForQueue(tc.queue, &azservicebus.ReceiverOptions{SubQueue: tc.sub})
		if err != nil {
			t.Fatal(err)
		}
		if msgs, err := r.PeekMessages(ctx(t), 1, nil); err != nil || len(msgs) != 0 {
			t.Errorf("%s sub-queue %v: %v %v", tc.queue, tc.sub, msgs, err)
		}
		r.Close(ctx(t))
	}
}
