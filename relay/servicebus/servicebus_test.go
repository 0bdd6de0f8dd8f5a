package servicebus_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"

	"github.com/hookbridge/hookbridge/consumer"
	"github.com/hookbridge/hookbridge/internal/testrun"
	"github.com/hookbridge/hookbridge/internal/testwait"
	"github.com/hookbridge/hookbridge/relay"
	"github.com/hookbridge/hookbridge/relay/relaytest"
	"github.com/hookbridge/hookbridge/relay/servicebus"
	"github.com/hookbridge/hookbridge/schemas"
)

var settings = relaytest.Settings{LockDuration: 2 * time.Second, MaxDeliveryCount: 5, DuplicateWindow: time.Minute}

// tctx bounds a blocking call of these tests.
func tctx(t testing.TB) context.Context { return testwait.Context(t, 30*time.Second) }

func event(t testing.TB, id, key string) relay.Message {
	t.Helper()
	data := `{"serverCallId":"s"}`
	if key != "" {
		data = fmt.Sprintf(`{"correlationId":%q}`, key)
	}
	return relaytest.EventMessage(t, schemas.Event{ID: id, Source: "calling/callConnections/c", Type: "Microsoft.Communication.PlayCompleted", Subject: "calling/callConnections/c",
		Time: "2024-05-14T17:30:12Z", Data: json.RawMessage(data), PartitionKey: key, Received: time.Now(), Route: schemas.RouteACSCallbacks, Verifier: "acs-jwt"})
}

// TestMappingRoundTrip sends an event's message through the SDK and reads
// the message and the event back, with a raw SDK receiver checking what
// Service Bus sees: MessageID, SessionID, Subject, content type and the
// cloudEvents_* application properties.
func TestMappingRoundTrip(t *testing.T) {
	t.Parallel()
	emu := emulator(t)
	q, name := openEmulatedIdle(t, emu, settings, true)
	keyed, keyless := event(t, "evt-1", "call-7"), event(t, "evt-2", "")
	if err := q.SendBatch(tctx(t), []relay.Message{keyed, keyless}); err != nil {
		t.Fatal(err)
	}
	// What Service Bus holds, through the SDK directly.
	client, err := azservicebus.NewClientFromConnectionString(emu.ConnectionString(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close(context.Background())
	sr, err := client.AcceptSessionForQueue(tctx(t), name, "call-7", nil)
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := sr.ReceiveMessages(tctx(t), 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	sm := msgs[0]
	if sm.MessageID != "evt-1" || *sm.SessionID != "call-7" || *sm.Subject != "Microsoft.Communication.PlayCompleted" ||
		*sm.ContentType != schemas.ContentType {
		t.Errorf("on the wire: id %q session %v subject %v content type %v", sm.MessageID, *sm.SessionID, *sm.Subject, *sm.ContentType)
	}
	for k, want := range map[string]any{relay.PropType: "Microsoft.Communication.PlayCompleted", relay.PropID: "evt-1",
		relay.PropSource: "calling/callConnections/c", relay.PropSubject: "calling/callConnections/c", relay.PropTime: "2024-05-14T17:30:12Z"} {
		if sm.ApplicationProperties[k] != want {
			t.Errorf("application property %s = %v, want %v", k, sm.ApplicationProperties[k], want)
		}
	}
	sr.AbandonMessage(tctx(t), sm, nil)
	sr.Close(tctx(t))

	// And back through the backend.
	runQueue(t, q)
	got := map[string]*relay.Received{}
	for len(got) < 2 {
		rs, err := q.Receive(tctx(t), 2)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rs {
			got[r.ID] = r
		}
	}
	if got["evt-1"].SessionID != "call-7" || got["evt-2"].SessionID != "" {
		t.Errorf("sessions back: %q %q", got["evt-1"].SessionID, got["evt-2"].SessionID)
	}
	for _, r := range got {
		e, err := r.Event()
		if err != nil {
			t.Fatalf("event back: %v", err)
		}
		if e.ID != r.ID || e.Verifier != "acs-jwt" {
			t.Errorf("event back: %+v", e)
		}
		if err := q.Complete(tctx(t), r); err != nil {
			t.Fatal(err)
		}
		if err := q.Complete(tctx(t), r); !errors.Is(err, relay.ErrLockLost) {
			t.Errorf("second complete: %v, want ErrLockLost", err)
		}
	}
}

// TestBatchSplitting sends more than one 256 KB batch's worth in one call,
// and a message that fits no batch among others that do.
func TestBatchSplitting(t *testing.T) {
	t.Parallel()
	emu := emulator(t)
	q, name := openEmulated(t, emu, settings, false)
	var msgs []relay.Message
	for i := range 40 {
		m := event(t, fmt.Sprintf("big-%02d", i), "")
		m.Body = []byte(strings.Repeat("x", 20_000)) // 40 × 20 KB: at least four batches
		msgs = append(msgs, m)
	}
	if err := q.SendBatch(tctx(t), msgs); err != nil {
		t.Fatalf("SendBatch: %v", err)
	}
	// 800 KB went through a link that takes 256 KB per transfer, so it
	// was split; every message arrived.
	if st, _ := emu.Stats(name); st.Active != 40 {
		t.Errorf("%d messages queued, want 40", st.Active)
	}
	huge := event(t, "huge", "")
	huge.Body = []byte(strings.Repeat("x", 300_000))
	if err := q.SendBatch(tctx(t), []relay.Message{huge}); !errors.Is(err, relay.ErrMessageTooLarge) {
		t.Fatalf("300 KB message: %v, want ErrMessageTooLarge", err)
	}
	// The oversized message is left out, and the others of its call go
	// out around it.
	err := q.SendBatch(tctx(t), []relay.Message{event(t, "before", ""), huge, event(t, "after", "")})
	if !errors.Is(err, relay.ErrMessageTooLarge) || !strings.Contains(err.Error(), `"huge"`) {
		t.Fatalf("batch with a 300 KB message: %v, want ErrMessageTooLarge naming it", err)
	}
	var notSent *relay.NotSentError
	if !errors.As(err, &notSent) || !slices.Equal(notSent.IDs, []string{"huge"}) {
		t.Errorf("batch with a 300 KB message: %#v, want a NotSentError naming only it", err)
	}
	if st, _ := emu.Stats(name); st.Active != 42 {
		t.Errorf("%d messages queued, want 42: the 40, then the two around the oversized one", st.Active)
	}
}

// TestConsumerThroughServiceBus runs the worker over the Service Bus
// backend: per-call order, settlement by outcome, dead-lettering.
func TestConsumerThroughServiceBus(t *testing.T) {
	t.Parallel()
	emu := emulator(t)
	q, name := openEmulated(t, emu, relaytest.Settings{LockDuration: 2 * time.Second, MaxDeliveryCount: 3, DuplicateWindow: time.Minute}, true)
	var msgs []relay.Message
	for i := range 10 {
		for k := range 3 {
			msgs = append(msgs, event(t, fmt.Sprintf("c%d-%02d", k, i), fmt.Sprintf("call-%d", k)))
		}
	}
	msgs = append(msgs, event(t, "poison", "call-p"), event(t, "rejected", "call-r"))
	if err := q.SendBatch(tctx(t), msgs); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	order := map[string][]string{}
	done := make(chan struct{})
	w, err := consumer.New(q, consumer.HandlerFunc(func(_ context.Context, e *schemas.Event) error {
		switch e.ID {
		case "poison":
			return errors.New("backend keeps failing")
		case "rejected":
			return consumer.Permanent("BackendRejected", errors.New("400 Bad Request"))
		}
		mu.Lock()
		defer mu.Unlock()
		order[e.PartitionKey] = append(order[e.PartitionKey], e.ID)
		n := 0
		for _, o := range order {
			n += len(o)
		}
		if n == 30 {
			close(done)
		}
		return nil
	}), consumer.Config{Concurrency: 4, MinBackoff: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	stop := testrun.Start(t, w.Run)
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("not all events delivered")
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		dls, err := q.ListDeadLetters(tctx(t), 0, 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(dls) == 2 {
			reasons := map[string]string{}
			for _, d := range dls {
				reasons[d.ID] = d.Reason
			}
			if reasons["poison"] != relay.ReasonMaxDelivery || reasons["rejected"] != "BackendRejected" {
				t.Errorf("dead letters: %v", reasons)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dead letters: %d", len(dls))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := stop(); err != nil {
		t.Errorf("Run: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	for k, o := range order {
		for i := 1; i < len(o); i++ {
			if o[i] < o[i-1] {
				t.Errorf("%s out of order: %v", k, o)
				break
			}
		}
	}
	if st, _ := emu.Stats(name); st.Active+st.Locked != 0 {
		t.Errorf("left in the queue: %+v", st)
	}
}

func TestParseURL(t *testing.T) {
	t.Parallel()
	cfg, err := servicebus.ParseURL("servicebus://contoso.servicebus.windows.net/events?max_sessions=16&sessions=false", "")
	if err != nil || cfg.Namespace != "contoso.servicebus.windows.net" || cfg.Queue != "events" || cfg.MaxSessions != 16 || *cfg.Sessions {
		t.Errorf("ParseURL: %+v %v", cfg, err)
	}
	if _, err := servicebus.ParseURL("servicebus:///events", "Endpoint=sb://x/;SharedAccessKeyName=a;SharedAccessKey=b"); err != nil {
		t.Errorf("connection string form: %v", err)
	}
	for _, bad := range []string{"servicebus:///events", "servicebus://ns/", "servicebus://ns/a/b", "servicebus://ns/q?colour=red", "servicebus://ns/q?max_sessions=x",
		"servicebus://ns/q?max_sessions=0", "servicebus://ns/q?lock=0s", "servicebus://ns/q?session_idle=0", "sqlite:q.db"} {
		if _, err := servicebus.ParseURL(bad, ""); err == nil {
			t.Errorf("ParseURL(%q) accepted", bad)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	valid := servicebus.Config{Namespace: "ns.servicebus.windows.net", Queue: "q", MaxSessions: 4}
	if err := valid.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, change := range map[string]func(*servicebus.Config){
		"no queue":             func(c *servicebus.Config) { c.Queue = "" },
		"queue with a slash":   func(c *servicebus.Config) { c.Queue = "a/b" },
		"no namespace":         func(c *servicebus.Config) { c.Namespace = "" },
		"negative max session": func(c *servicebus.Config) { c.MaxSessions = -1 },
		"negative retry delay": func(c *servicebus.Config) { c.RetryDelay = -1 },
	} {
		c := valid
		change(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestReplayThroughServiceBus dead-letters messages on a session queue and
// replays some of them with a filter: the copies come back in their
// sessions, the others stay dead-lettered.
func TestReplayThroughServiceBus(t *testing.T) {
	t.Parallel()
	emu := emulator(t)
	q, _ := openEmulated(t, emu, settings, true)
	if err := q.SendBatch(tctx(t), []relay.Message{event(t, "r1", "call-1"), event(t, "r2", "call-2"), event(t, "r3", "call-3")}); err != nil {
		t.Fatal(err)
	}
	for got := 0; got < 3; {
		msgs, err := q.Receive(tctx(t), 3)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range msgs {
			reason := "BackendRejected"
			if m.ID == "r3" {
				reason = "Other"
			}
			if err := q.DeadLetter(tctx(t), m, reason, "backend said no"); err != nil {
				t.Fatal(err)
			}
			got++
		}
	}
	res, err := consumer.Replay(tctx(t), q, consumer.DeadLetterFilter{Reason: "BackendRejected"}, consumer.ReplayOptions{})
	if err != nil || res.Done != 2 {
		t.Fatalf("replay: %+v %v", res, err)
	}
	back := map[string]string{}
	for len(back) < 2 {
		msgs, err := q.Receive(tctx(t), 2)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range msgs {
			e, _ := m.Event()
			back[e.ID] = m.SessionID
			if m.Properties[relay.PropReplayCount] != int64(1) {
				t.Errorf("replay count %v", m.Properties[relay.PropReplayCount])
			}
			q.Complete(tctx(t), m)
		}
	}
	if back["r1"] != "call-1" || back["r2"] != "call-2" {
		t.Errorf("replayed into sessions %v", back)
	}
	left, err := q.ListDeadLetters(tctx(t), 0, 10)
	if err != nil || len(left) != 1 || left[0].ID != "r3" {
		t.Errorf("left in the dead-letter queue: %+v %v", left, err)
	}
}
