package console_test

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"

	"github.com/hookbridge/hookbridge/internal/console"
	"github.com/hookbridge/hookbridge/internal/sbemu"
	"github.com/hookbridge/hookbridge/internal/sbemu/sbemutest"
	"github.com/hookbridge/hookbridge/relay"
	"github.com/hookbridge/hookbridge/relay/servicebus"
)

// TestServiceBus runs the console on a session-enabled Service Bus queue
// (the emulator, through the real SDK): the overview lists the calls, a
// call is found with its dead-lettered event, and the replay through the
// console puts the copy back in the call's session.
func TestServiceBus(t *testing.T) {
	t.Parallel()
	emu := sbemutest.NewServer(t, sbemu.QueueConfig{Name: "events", RequiresSession: true, LockDuration: 5 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	q, err := servicebus.Open(ctx, servicebus.Config{Queue: "events", ConnectionString: emu.ConnectionString(), LockDuration: 5 * time.Second}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	msgs := []relay.Message{
		event(t, "evt-incoming", "Microsoft.Communication.IncomingCall", callID, `{"correlationId":"`+callID+`"}`),
		event(t, "evt-connected", "Microsoft.Communication.CallConnected", callID, `{"correlationId":"`+callID+`"}`),
	}
	if err := q.SendBatch(ctx, msgs); err != nil {
		t.Fatal(err)
	}
	client := emu.NewClient(t)
	sr, err := client.AcceptSessionForQueue(ctx, "events", callID, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := sr.ReceiveMessages(ctx, 1, nil)
	if err != nil || len(got) != 1 {
		t.Fatalf("receive: %v", err)
	}
	reason, desc := "BackendRejected", "backend answered 400"
	if err := sr.DeadLetterMessage(ctx, got[0], &azservicebus.DeadLetterOptions{Reason: &reason, ErrorDescription: &desc}); err != nil {
		t.Fatal(err)
	}
	sr.Close(ctx)

	c, err := console.New(console.Config{Queue: q, QueueName: "servicebus:///events", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(c)
	defer srv.Close()
	jar, _ := cookiejar.New(nil)
	f := &fixture{srv: srv, c: &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}

	status, body, _ := f.get(t, "/")
	if status != http.StatusOK || !strings.Contains(body, callID) || !strings.Contains(body, "BackendRejected") || !strings.Contains(body, "only while holding a session") {
		t.Fatalf("overview: %d\n%s", status, body)
	}
	status, body, _ = f.get(t, "/find?q="+callID)
	if status != http.StatusOK || !regexp.MustCompile(`(?s)dead-lettered.*IncomingCall.*active.*CallConnected`).MatchString(body) {
		t.Fatalf("find: %d\n%s", status, body)
	}
	token := f.csrf(t)
	status, body = f.post(t, "/dlq/replay", url.Values{"csrf": {token}, "scope": {"filter"}, "reason": {"BackendRejected"}}, nil)
	seqs := regexp.MustCompile(`name="seq" value="(\d+)"`).FindAllStringSubmatch(body, -1)
	if status != http.StatusOK || len(seqs) != 1 {
		t.Fatalf("preview: %d\n%s", status, body)
	}
	status, body = f.post(t, "/dlq/replay", url.Values{"csrf": {token}, "step": {"confirm"}, "reason": {"BackendRejected"}, "seq": {seqs[0][1]}}, nil)
	if status != http.StatusOK || !strings.Contains(body, "replayed 1 of 1") {
		t.Fatalf("confirm: %d\n%s", status, body)
	}
	res, err := q.Find(ctx, relay.FindQuery{PartitionKey: callID})
	if err != nil {
		t.Fatal(err)
	}
	var states []string
	for _, m := range res.Messages {
		states = append(states, m.EventID()+":"+string(m.State))
	}
	if strings.Join(states, ",") != "evt-connected:active,evt-incoming:active" {
		t.Errorf("after the replay the call holds %v", states)
	}
}
