package sbemu_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"

	"github.com/hookbridge/hookbridge/internal/sbemu"
	"github.com/hookbridge/hookbridge/internal/sbemu/sbemutest"
)

// jsClientDir holds the JavaScript client, its package.json pinning
// @azure/service-bus and its lock file.
const jsClientDir = "testdata/jsclient"

// requireJSClient returns the node binary, or skips the test (fails it when
// HOOKBRIDGE_REQUIRE_JS_SDK=1) when node or the SDK is not installed.
func requireJSClient(t *testing.T) string {
	t.Helper()
	missing := func(what string) string {
		msg := what + ": install the JavaScript SDK with `npm ci --prefix internal/sbemu/testdata/jsclient` (Node.js 20)"
		if os.Getenv("HOOKBRIDGE_REQUIRE_JS_SDK") == "1" {
			t.Fatal(msg + "; HOOKBRIDGE_REQUIRE_JS_SDK=1 requires this test to run")
		}
		t.Skip(msg + "; set HOOKBRIDGE_REQUIRE_JS_SDK=1 to make its absence a failure")
		return ""
	}
	node, err := exec.LookPath("node")
	if err != nil {
		return missing("node is not on PATH")
	}
	if _, err := os.Stat(filepath.Join(jsClientDir, "node_modules", "@azure", "service-bus", "package.json")); err != nil {
		return missing("@azure/service-bus is not installed in " + jsClientDir)
	}
	return node
}

// TestJavaScriptSDK drives the emulator with Microsoft's JavaScript SDK,
// a second client written independently of the Go SDK, so the emulator
// keeps speaking Service Bus rather than what one SDK happens to accept.
// It also has that SDK read a message sent the way hookbridge sends its
// events, proving consumers in other languages can read them.
func TestJavaScriptSDK(t *testing.T) {
	t.Parallel()
	node := requireJSClient(t)
	srv := sbemutest.NewServer(t,
		sbemu.QueueConfig{Name: "q", MaxDeliveryCount: 5, LockDuration: 30 * time.Second},
		sbemu.QueueConfig{Name: "sq", RequiresSession: true, LockDuration: 30 * time.Second},
		sbemu.QueueConfig{Name: "hb", RequiresSession: true, RequiresDuplicateDetection: true},
	)
	srv.ExpectNoLeaks()

	// A message as hookbridge's Service Bus backend sends one: the
	// structured CloudEvent as body, Subject = type, SessionID = partition
	// key, the CloudEvents AMQP binding's application properties.
	event := map[string]any{
		"specversion": "1.0", "id": "evt-1", "source": "calling/callConnections/c-1", "type": "Microsoft.Communication.CallConnected",
		"time": "2024-05-01T10:00:00Z", "datacontenttype": "application/json", "partitionkey": "corr-1",
		"data": map[string]any{"callConnectionId": "c-1", "correlationId": "corr-1"},
	}
	body, _ := json.Marshal(event)
	sid, id, ctype, subject := "corr-1", "evt-1", "application/cloudevents+json; charset=utf-8", "Microsoft.Communication.CallConnected"
	props := map[string]any{
		"cloudEvents_type": subject, "cloudEvents_source": "calling/callConnections/c-1", "cloudEvents_id": "evt-1",
		"cloudEvents_time": "2024-05-01T10:00:00Z", "hookbridge_replay_count": int64(2),
	}
	snd, err := srv.NewClient(t).NewSender("hb", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := snd.SendMessage(ctx(t), &azservicebus.Message{MessageID: &id, SessionID: &sid, ContentType: &ctype,
		Subject: &subject, Body: body, ApplicationProperties: props}, nil); err != nil {
		t.Fatalf("send the hookbridge message with the Go SDK: %v", err)
	}
	snd.Close(ctx(t))

	runCtx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(runCtx, node, "client.js")
	cmd.Dir = jsClientDir
	cmd.Env = append(os.Environ(), "SBEMU_CONNECTION_STRING="+srv.ConnectionString())
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, runErr := cmd.Output()

	steps := map[string]map[string]any{}
	var order []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var line map[string]any
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Fatalf("the client printed a line that is not JSON: %q", sc.Text())
		}
		name, _ := line["step"].(string)
		if e, failed := line["error"]; failed {
			t.Fatalf("JavaScript SDK step %q failed: %v (code %v)\nstderr:\n%s", name, e, line["code"], stderr.String())
		}
		steps[name] = line
		order = append(order, name)
	}
	if _, done := steps["done"]; runErr != nil || !done {
		t.Fatalf("node client.js: %v; steps done: %v\nstderr:\n%s", runErr, order, stderr.String())
	}

	type msgView struct {
		MessageID             string         `json:"messageId"`
		Body                  any            `json:"body"`
		DeliveryCount         *int           `json:"deliveryCount"`
		SequenceNumber        int64          `json:"sequenceNumber"`
		SessionID             string         `json:"sessionId"`
		ApplicationProperties map[string]any `json:"applicationProperties"`
	}
	// decode reads field of a step's line into v.
	decode := func(stepName, field string, v any) {
		t.Helper()
		line, found := steps[stepName]
		if !found {
			t.Fatalf("the client never reported step %q (steps done: %v)", stepName, order)
		}
		b, _ := json.Marshal(line[field])
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatalf("step %q field %q: %v", stepName, field, err)
		}
	}
	ids := func(ms []msgView) []string {
		var out []string
		for _, m := range ms {
			out = append(out, m.MessageID)
		}
		return out
	}
	count := func(m msgView) int {
		if m.DeliveryCount == nil {
			t.Errorf("message %s has no delivery count: the header's delivery-count must be sent even when 0", m.MessageID)
			return -1
		}
		return *m.DeliveryCount
	}

	var received []msgView
	decode("receive", "messages", &received)
	if got := ids(received); !reflect.DeepEqual(got, []string{"m-1", "b-1", "b-2", "b-3"}) {
		t.Errorf("received %v, want the single message then the batch, in order", got)
	}
	if len(received) > 0 {
		if received[0].ApplicationProperties["k"] != "v" || received[0].ApplicationProperties["n"] != float64(7) || count(received[0]) != 0 {
			t.Errorf("first message: %+v", received[0])
		}
	}

	var renewed bool
	decode("renewLock", "extended", &renewed)
	if !renewed {
		t.Error("renewMessageLock did not extend the lock")
	}

	var abandoned msgView
	decode("abandon", "message", &abandoned)
	if abandoned.MessageID != "b-1" || count(abandoned) != 1 || abandoned.ApplicationProperties["abandonedBy"] != "js" {
		t.Errorf("after abandon with properties to modify: %+v, want b-1 with delivery count 1 and abandonedBy=js", abandoned)
	}

	var deferred msgView
	var deferredState string
	decode("defer", "message", &deferred)
	decode("defer", "state", &deferredState)
	if deferred.MessageID != "b-3" || deferredState != "deferred" {
		t.Errorf("receiveDeferredMessages: %+v state %q, want b-3 in state deferred", deferred, deferredState)
	}

	var peekedDL []msgView
	decode("peekDeadLetter", "messages", &peekedDL)
	if got := ids(peekedDL); !reflect.DeepEqual(got, []string{"b-2"}) {
		t.Errorf("peek of the dead-letter queue: %v, want [b-2]", got)
	}
	var reason, description, source string
	decode("receiveDeadLetter", "deadLetterReason", &reason)
	decode("receiveDeadLetter", "deadLetterErrorDescription", &description)
	decode("receiveDeadLetter", "deadLetterSource", &source)
	if reason != "BadThing" || description != "it was bad" || source != "q" {
		t.Errorf("dead letter: reason %q description %q source %q", reason, description, source)
	}

	var peekedState []string
	var scheduled msgView
	var waited float64
	decode("schedule", "peekedState", &peekedState)
	decode("schedule", "message", &scheduled)
	decode("schedule", "waitedMs", &waited)
	if !reflect.DeepEqual(peekedState, []string{"scheduled"}) || scheduled.MessageID != "sched-1" || waited < 500 {
		t.Errorf("scheduled: peeked states %v (want only the uncancelled one, scheduled), got %s after %vms", peekedState, scheduled.MessageID, waited)
	}

	var left float64
	var rad msgView
	decode("receiveAndDelete", "left", &left)
	decode("receiveAndDelete", "message", &rad)
	if rad.MessageID != "rad-1" || left != 0 || steps["receiveAndDelete"]["lockToken"] != nil {
		t.Errorf("receive and delete: %+v, %v left, lock token %v", rad, left, steps["receiveAndDelete"]["lockToken"])
	}

	// Sessions: the first receiver of s1 closed without settling s1-1, so
	// the next one gets s1-1 first, its delivery count not raised (Service
	// Bus raises it only when a session lock expires).
	var firstTake msgView
	decode("acceptSessionAndClose", "message", &firstTake)
	var again []msgView
	decode("acceptSessionAgain", "messages", &again)
	if firstTake.MessageID != "s1-1" || !reflect.DeepEqual(ids(again), []string{"s1-1", "s1-2", "s1-3"}) {
		t.Errorf("session s1: first receiver got %s, the next %v; want s1-1, then s1-1 s1-2 s1-3", firstTake.MessageID, ids(again))
	} else if count(again[0]) != 0 {
		t.Errorf("s1-1 after its session was closed: delivery count %d, want 0", count(again[0]))
	}
	var state string
	var sessionRenewed bool
	var peekedInSession float64
	decode("acceptSessionAgain", "state", &state)
	decode("acceptSessionAgain", "renewed", &sessionRenewed)
	decode("acceptSessionAgain", "peeked", &peekedInSession)
	if state != "step-7" || !sessionRenewed || peekedInSession != 3 {
		t.Errorf("session state %q, lock renewed %v, peeked %v messages (want the session's 3)", state, sessionRenewed, peekedInSession)
	}
	var nextSession string
	decode("acceptNextSession", "sessionId", &nextSession)
	if nextSession != "s2" {
		t.Errorf("acceptNextSession got session %q, want s2", nextSession)
	}

	var noneLeft string
	decode("acceptNextSessionNoneLeft", "code", &noneLeft)
	if noneLeft != "ServiceTimeout" {
		t.Errorf("acceptNextSession with no session left: code %q, want ServiceTimeout", noneLeft)
	}

	// The hookbridge message, read by the JavaScript SDK.
	var hb struct {
		SessionID             string         `json:"sessionId"`
		MessageID             string         `json:"messageId"`
		ContentType           string         `json:"contentType"`
		Subject               string         `json:"subject"`
		Body                  map[string]any `json:"body"`
		ApplicationProperties map[string]any `json:"applicationProperties"`
	}
	line, _ := json.Marshal(steps["hookbridgeMessage"])
	if err := json.Unmarshal(line, &hb); err != nil {
		t.Fatal(err)
	}
	wantProps := map[string]any{
		"cloudEvents_type": subject, "cloudEvents_source": "calling/callConnections/c-1", "cloudEvents_id": "evt-1",
		"cloudEvents_time": "2024-05-01T10:00:00Z", "hookbridge_replay_count": float64(2),
	}
	var wantBody map[string]any
	json.Unmarshal(body, &wantBody)
	if hb.SessionID != sid || hb.MessageID != id || hb.ContentType != ctype || hb.Subject != subject ||
		!reflect.DeepEqual(hb.Body, wantBody) || !reflect.DeepEqual(hb.ApplicationProperties, wantProps) {
		t.Errorf("the JavaScript SDK read the hookbridge message as %+v", hb)
	}

	// Everything the client settled is gone.
	for _, q := range []string{"q", "sq", "hb"} {
		if st, err := srv.Stats(q); err != nil || st != (sbemu.QueueStats{}) {
			t.Errorf("queue %s after the client: %+v %v", q, st, err)
		}
	}
}
