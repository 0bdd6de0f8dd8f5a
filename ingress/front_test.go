package ingress_test

import (
	"bufio"
	"context"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hookbridge/hookbridge/consumer"
	"github.com/hookbridge/hookbridge/ingress"
	"github.com/hookbridge/hookbridge/internal/metrictest"
	"github.com/hookbridge/hookbridge/internal/sqlitetest"
	"github.com/hookbridge/hookbridge/internal/testlog"
	"github.com/hookbridge/hookbridge/internal/testwait"
	"github.com/hookbridge/hookbridge/relay"
	"github.com/hookbridge/hookbridge/relay/sqlite"
)

// signedMalformed are events a verified sender may post that break an
// envelope rule: each must end in the queue (repaired by a lenient rule) or
// in the dead-letter queue, never in a 4xx.
var signedMalformed = []struct {
	name, path, contentType, body string
	queued, dead                  int
	rule                          string // in the dead-letter description
	eventID                       string // cloudEvents_id of the dead letter
}{
	{"capitalised attribute name", "/acs/callbacks", "application/json", `[{"specversion":"1.0","id":"m1","source":"s","type":"t","CorrelationKey":"x"}]`, 1, 0, "", ""},
	{"capital colliding with its lower-case twin", "/acs/callbacks", "application/json", `[{"specversion":"1.0","id":"m2","source":"s","type":"t","Type":"T"}]`, 0, 1, "differs only in case", "m2"},
	{"missing source", "/acs/callbacks", "application/json", `[{"specversion":"1.0","id":"m3","type":"t"}]`, 0, 1, `"source" is required`, "m3"},
	{"wrong specversion", "/acs/callbacks", "application/json", `[{"specversion":"0.3","id":"m4","source":"s","type":"t"}]`, 0, 1, "specversion", "m4"},
	{"non-string id", "/acs/callbacks", "application/json", `[{"specversion":"1.0","id":4,"source":"s","type":"t"}]`, 0, 1, `"id" must be a string`, ""},
	{"invalid time", "/acs/callbacks", "application/json", `[{"specversion":"1.0","id":"m6","source":"s","type":"t","time":"yesterday"}]`, 0, 1, "RFC 3339", "m6"},
	{"data and data_base64", "/acs/callbacks", "application/json", `[{"specversion":"1.0","id":"m7","source":"s","type":"t","data":{},"data_base64":"AA=="}]`, 0, 1, "cannot be combined", "m7"},
	{"null element beside a good one", "/acs/callbacks", "application/json", `[null,` + strings.Trim(callConnected, "[]") + `]`, 1, 1, "is null", ""},
	{"element that is not an object", "/acs/callbacks", "application/cloudevents-batch+json", `["CallConnected"]`, 0, 1, "not a JSON object", ""},
	{"a JSON number as the body", "/acs/callbacks", "application/json", `42`, 0, 1, "not a JSON object", ""},
	{"invalid UTF-8 in an id", "/acs/callbacks", "application/json", "[{\"specversion\":\"1.0\",\"id\":\"m11\xff\",\"source\":\"s\",\"type\":\"t\"}]", 0, 1, "UTF-8", ""},
	{"Event Grid event without topic", "/eventgrid", "application/json", `[{"id":"m12","eventType":"T","data":{"correlationId":"call-12"}}]`, 0, 1, `"topic" is required`, "m12"},
	{"Event Grid event with a bad eventTime", "/eventgrid", "application/json", `[{"id":"m13","topic":"/t","eventType":"T","eventTime":"13:00"}]`, 0, 1, "RFC 3339", "m13"},
	{"validation event inside a delivery", "/eventgrid", "application/json", `[{"id":"m14","topic":"/t","eventType":"Microsoft.EventGrid.SubscriptionValidationEvent","data":{"validationCode":"c"}}]`, 0, 1, "subscription validation", "m14"},
	{"CloudEvents array sent as structured mode", "/eventgrid", "application/cloudevents+json", `[` + strings.Trim(callConnected, "[]") + `]`, 1, 0, "", ""},
}

// TestSignedMalformedEventsAreNeverRefused posts each signed-but-malformed
// body through a verified route: 200, every good event queued, every bad one
// bound for the dead-letter queue as MalformedEvent with the body as
// received and the rule it broke.
func TestSignedMalformedEventsAreNeverRefused(t *testing.T) {
	t.Parallel()
	for _, tt := range signedMalformed {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			pub := &fakePublisher{}
			reg := prometheus.NewRegistry()
			h, logs := newServer(t, ingress.Config{Publisher: pub, Registerer: reg,
				ACSVerifiers: []ingress.Verifier{staticVerifier{true}}, EventGridVerifiers: []ingress.Verifier{staticVerifier{true}}})
			req := testRequest(http.MethodPost, tt.path, tt.contentType, tt.body)
			req.Header.Set("aeg-event-type", "Notification")
			r := do(t, h, req)
			if r.status != 200 {
				t.Fatalf("status %d %s, want 200", r.status, r.raw)
			}
			dead := pub.deadLettered()
			if pub.count() != tt.queued || len(dead) != tt.dead {
				t.Fatalf("%d queued, %d dead-lettered; want %d and %d", pub.count(), len(dead), tt.queued, tt.dead)
			}
			if tt.dead == 0 {
				return
			}
			d := dead[0]
			if d.DeadLetterReason != relay.ReasonMalformedEvent || !strings.Contains(d.DeadLetterDescription, tt.rule) {
				t.Errorf("reason %q description %q, want MalformedEvent and %q", d.DeadLetterReason, d.DeadLetterDescription, tt.rule)
			}
			if !strings.Contains(tt.body, string(d.Body)) || d.ContentType != relay.MalformedContentType {
				t.Errorf("dead letter body %q is not the element as received", d.Body)
			}
			if id, _ := d.Properties[relay.PropID].(string); id != tt.eventID {
				t.Errorf("cloudEvents_id %q, want %q", id, tt.eventID)
			}
			if r.body["dead_lettered"] != float64(tt.dead) {
				t.Errorf("answer %s does not count the dead-lettered event", r.raw)
			}
			if !strings.Contains(logs.String(), d.ID) || metrictest.Value(t, reg, "hookbridge_ingress_requests_total", "cause", ingress.CauseMalformedEvent) != 1 {
				t.Errorf("dead letter %s not logged or counted:\n%s", d.ID, logs.String())
			}
		})
	}
}

// An event that fits the body but outgrows the queue once normalized
// (escaping writes each '<' as six bytes) goes to the dead-letter queue as
// it was received; the request's other events are queued and the sender is
// answered 200. Refusing the request would lose them all: Call Automation
// does not retry, and Event Grid does not retry a 413.
func TestEventOutgrowingTheQueueIsDeadLettered(t *testing.T) {
	t.Parallel()
	const limit = 64 << 10
	q := sqlitetest.Open(t, sqlite.Config{MaxMessageBytes: limit})
	b, err := relay.NewBatcher(q, relay.BatchConfig{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	go b.Run(context.Background())
	t.Cleanup(b.Close)
	h, logs := newServer(t, ingress.Config{Publisher: b, MaxBodyBytes: limit, MaxMessageBytes: q.MaxMessageBytes(),
		ACSVerifiers: []ingress.Verifier{staticVerifier{true}}})
	big := `{"specversion":"1.0","id":"big-1","source":"s","type":"t","subject":"` + strings.Repeat("<", 20<<10) + `","data":{"correlationId":"corr-1"}}`
	body := `[` + strings.Trim(callConnected, "[]") + `,` + big + `]`
	r := do(t, h, testRequest(http.MethodPost, "/acs/callbacks", "application/json", body))
	if r.status != 200 || r.body["accepted"] != float64(1) || r.body["dead_lettered"] != float64(1) {
		t.Fatalf("status %d %s, want 200 with one event accepted and one dead-lettered", r.status, r.raw)
	}
	active, dl, err := q.Counts(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if active != 1 || dl != 1 {
		t.Fatalf("queue holds %d, dead-letter queue %d; want 1 and 1", active, dl)
	}
	var found []relay.DeadLetter
	err = consumer.ListDeadLetters(context.Background(), q, consumer.DeadLetterFilter{IDs: []string{"big-1"}}, func(d relay.DeadLetter) error {
		found = append(found, d)
		return nil
	})
	if err != nil || len(found) != 1 {
		t.Fatalf("dead letters of big-1: %d, %v", len(found), err)
	}
	if d := found[0]; string(d.Body) != big || d.Reason != relay.ReasonMalformedEvent || !strings.Contains(d.Description, "max_message_bytes") {
		t.Errorf("dead letter: reason %q, description %q, body as received %v", d.Reason, d.Description, string(d.Body) == big)
	}
	if !strings.Contains(logs.String(), "max_message_bytes") {
		t.Errorf("the dead-lettering is not logged with its cause:\n%s", logs.String())
	}
}

// TestSignedMalformedEndToEnd sends the same bodies through group commit
// into the SQLite queue: every request is answered 200 only once what it
// holds is stored, each good event in the queue, each malformed one
// findable by its event id.
func TestSignedMalformedEndToEnd(t *testing.T) {
	t.Parallel()
	q, b := newQueue(t)
	h, _ := newServer(t, ingress.Config{Publisher: b,
		ACSVerifiers: []ingress.Verifier{staticVerifier{true}}, EventGridVerifiers: []ingress.Verifier{staticVerifier{true}}})
	var queued, dead int64
	for i, tt := range signedMalformed {
		body := strings.ReplaceAll(tt.body, "evt-1", fmt.Sprintf("evt-e2e-%d", i))
		req := testRequest(http.MethodPost, tt.path, tt.contentType, body)
		req.Header.Set("aeg-event-type", "Notification")
		if r := do(t, h, req); r.status != 200 {
			t.Fatalf("%s: status %d %s", tt.name, r.status, r.raw)
		}
		queued += int64(tt.queued)
		dead += int64(tt.dead)
	}
	active, dl, err := q.Counts(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if active+dl != queued+dead {
		t.Fatalf("queue holds %d + %d dead-lettered, want %d events stored in all", active, dl, queued+dead)
	}
	if dl != dead {
		t.Fatalf("the SQLite queue kept %d of %d malformed events outside its dead-letter queue", dead-dl, dead)
	}
	if active != queued {
		t.Errorf("%d messages in the queue, want %d", active, queued)
	}
	// hookbridge dlq show finds each by its event id.
	for _, tt := range signedMalformed {
		if tt.eventID == "" {
			continue
		}
		var found []relay.DeadLetter
		err := consumer.ListDeadLetters(context.Background(), q, consumer.DeadLetterFilter{IDs: []string{tt.eventID}}, func(d relay.DeadLetter) error {
			found = append(found, d)
			return nil
		})
		if err != nil || len(found) != 1 || found[0].Reason != relay.ReasonMalformedEvent || !strings.Contains(tt.body, string(found[0].Body)) {
			t.Errorf("%s: dead letters with event id %s: %+v (err %v)", tt.name, tt.eventID, found, err)
		}
	}
}

// TestSameIDFromTwoSources: on the Event Grid route, two topics numbering
// their events alike are two events; a redelivery of either is one.
func TestSameIDFromTwoSources(t *testing.T) {
	t.Parallel()
	q, b := newQueue(t)
	h, _ := newServer(t, ingress.Config{Publisher: b, EventGridVerifiers: []ingress.Verifier{staticVerifier{true}}})
	event := func(topic string) string {
		return `[{"id":"1","topic":"` + topic + `","eventType":"Contoso.Order","data":{}}]`
	}
	for _, body := range []string{event("/topics/a"), event("/topics/b"), event("/topics/a")} {
		if r := do(t, h, egRequest("application/json", "Notification", body)); r.status != 200 {
			t.Fatalf("status %d %s", r.status, r.raw)
		}
	}
	var sources []string
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		msgs, err := q.Receive(ctx, 10)
		cancel()
		if err != nil || len(msgs) == 0 {
			break
		}
		for _, m := range msgs {
			e, err := m.Event()
			if err != nil {
				t.Fatal(err)
			}
			sources = append(sources, e.Source)
			if err := q.Complete(context.Background(), m); err != nil {
				t.Fatal(err)
			}
		}
	}
	slices.Sort(sources)
	if !slices.Equal(sources, []string{"/topics/a", "/topics/b"}) {
		t.Fatalf("delivered events from %v, want one per source, the redelivery dropped", sources)
	}
}

// TestReplayDefenceWithoutJTI: a Call Automation token without jti, reused
// with another body, is accepted in auto mode (logged with its digest, never
// the token; counted as token_reused), refused in strict mode, unchecked in
// off mode; the same body stays a retry, queued once, in auto and strict.
func TestReplayDefenceWithoutJTI(t *testing.T) {
	t.Parallel()
	iss := newIssuer(t)
	acs := newACS(t, iss, ingress.ACSConfig{}, true)
	forged := strings.Replace(callConnected, "CallConnected", "CallDisconnected", 1)
	tests := []struct {
		mode          ingress.ReplayDefence
		reuse         int // status of the other body
		queuedAtRetry int // events after first body, its retry, the other body
	}{
		{ingress.ReplayAuto, 200, 2},
		{ingress.ReplayStrict, 401, 1},
		{ingress.ReplayOff, 200, 3},
	}
	for _, tt := range tests {
		t.Run(string(tt.mode), func(t *testing.T) {
			t.Parallel()
			pub := &fakePublisher{}
			reg := prometheus.NewRegistry()
			h, logs := newServer(t, ingress.Config{Publisher: pub, ACSVerifiers: []ingress.Verifier{acs}, ReplayDefence: tt.mode, Registerer: reg})
			c := claims(iss)
			delete(c, "jti")
			tok := sign(t, iss, c)
			send := func(body string) int {
				return post(t, h, "/acs/callbacks", tok, "application/json", body).status
			}
			if s := send(callConnected); s != 200 {
				t.Fatalf("first use: %d", s)
			}
			if s := send(callConnected); s != 200 {
				t.Fatalf("retry: %d", s)
			}
			if s := send(forged); s != tt.reuse {
				t.Fatalf("another body: %d, want %d", s, tt.reuse)
			}
			if n := pub.count(); n != tt.queuedAtRetry {
				t.Errorf("%d events queued, want %d", n, tt.queuedAtRetry)
			}
			if tt.mode != ingress.ReplayAuto {
				return
			}
			if send(forged) != 200 || pub.count() != 2 {
				t.Errorf("a retry of the second body was queued again: %d events", pub.count())
			}
			if !strings.Contains(logs.String(), "token_digest") || strings.Contains(logs.String(), tok) || strings.Contains(logs.String(), strings.Split(tok, ".")[2]) {
				t.Errorf("reuse not logged with a digest, or the token leaked:\n%s", logs.String())
			}
			if metrictest.Value(t, reg, "hookbridge_ingress_requests_total", "cause", ingress.CauseTokenReused) != 1 {
				t.Error("reuse not counted as token_reused")
			}
			// A reuse whose body also holds a malformed event is still
			// counted as a reuse (the malformed event has its own counter).
			if s := send(`[{"specversion":"1.0","id":"m3","type":"t"}]`); s != 200 {
				t.Fatalf("reuse with a malformed event: %d", s)
			}
			if n := metrictest.Value(t, reg, "hookbridge_ingress_requests_total", "cause", ingress.CauseTokenReused); n != 2 {
				t.Errorf("%v requests counted as token_reused, want 2: a malformed event hid the reuse", n)
			}
		})
	}
}

// TestReplayEvictionsAreExported: when the replay cache is full of live
// tokens, each new one evicts an old one, counted on /metrics, where the
// tokens held are too.
func TestReplayEvictionsAreExported(t *testing.T) {
	t.Parallel()
	iss := newIssuer(t)
	acs := newACS(t, iss, ingress.ACSConfig{}, true)
	reg := prometheus.NewRegistry()
	h, _ := newServer(t, ingress.Config{Publisher: &fakePublisher{}, ACSVerifiers: []ingress.Verifier{acs}, ReplayCacheSize: 2, Registerer: reg})
	for i := range 5 {
		body := strings.Replace(callConnected, "evt-1", fmt.Sprint("evt-", i), 1)
		if r := post(t, h, "/acs/callbacks", sign(t, iss, claims(iss)), "application/json", body); r.status != 200 {
			t.Fatalf("status %d", r.status)
		}
	}
	if v := metrictest.Value(t, reg, "hookbridge_ingress_replay_evictions_total"); v != 3 {
		t.Errorf("%v evictions, want 3", v)
	}
	if v := metrictest.Value(t, reg, "hookbridge_ingress_replay_tokens"); v != 2 {
		t.Errorf("%v tokens held, want 2", v)
	}
}

// TestDrainKeepsServing: once Serve's context ends, readiness fails at
// once while the listener keeps answering 200 for DrainDelay; then the
// listener closes.
func TestDrainKeepsServing(t *testing.T) {
	t.Parallel()
	pub := &fakePublisher{}
	logs := &testlog.Buffer{}
	s, err := ingress.New(ingress.Config{Publisher: pub, ACSVerifiers: []ingress.Verifier{staticVerifier{true}},
		DrainDelay: 700 * time.Millisecond, Logger: newLogger(logs)})
	if err != nil {
		t.Fatal(err)
	}
	admin := httptest.NewServer(ingress.AdminHandler(prometheus.NewRegistry(), ingress.Check{Name: "ingress", Check: func(context.Context) error { return s.Ready() }}))
	defer admin.Close()
	addr, stop := serve(t, s)
	send := func() (int, error) { return postCallConnected(addr) }
	readyz := func() int {
		resp, err := http.Get(admin.URL + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if s, err := send(); s != 200 || readyz() != 200 {
		t.Fatalf("before shutdown: %d %v, readyz %d", s, err, readyz())
	}
	stopped := time.Now()
	served := make(chan error, 1)
	go func() { served <- stop(fmt.Errorf("test: rolling restart")) }()
	for time.Since(stopped) < 400*time.Millisecond {
		if s, err := send(); s != 200 {
			t.Fatalf("during the drain delay: %d %v, want 200", s, err)
		}
		if rz := readyz(); rz != 503 {
			t.Fatalf("readyz during the drain: %d, want 503", rz)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := <-served; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if time.Since(stopped) < 700*time.Millisecond {
		t.Errorf("Serve returned %v after its context ended, before the drain delay", time.Since(stopped))
	}
	if _, err := send(); err == nil {
		t.Error("the listener still accepts after the drain")
	}
	if !strings.Contains(logs.String(), "rolling restart") {
		t.Errorf("the cause of the shutdown is not logged:\n%s", logs.String())
	}
}

// TestSlowBodyIs408: a body that does not arrive within the read timeout
// is no fault of its content: 408, which senders retry, never 400.
func TestSlowBodyIs408(t *testing.T) {
	t.Parallel()
	s, err := ingress.New(ingress.Config{Publisher: &fakePublisher{}, ACSVerifiers: []ingress.Verifier{staticVerifier{true}},
		ReadTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := serve(t, s)
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /acs/callbacks HTTP/1.1\r\nHost: x\r\nX-Test-Token: ok\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
		len(callConnected), callConnected[:20]) // the rest never comes
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestTimeout {
		t.Errorf("slow body: %d, want 408", resp.StatusCode)
	}
}

// gatePublisher holds every Publish until open is closed.
type gatePublisher struct{ open chan struct{} }

func (p gatePublisher) Publish(context.Context, []relay.Message) error {
	<-p.open
	return nil
}

// TestBodiesInFlightAreBounded: a body beyond MaxBodyBytesInFlight waits for
// room before it is read, and gets 503 (retried) when none frees up in
// time; once the bodies in flight are committed, requests pass again.
func TestBodiesInFlightAreBounded(t *testing.T) {
	t.Parallel()
	pub := gatePublisher{open: make(chan struct{})}
	reg := prometheus.NewRegistry()
	h, _ := newServer(t, ingress.Config{Publisher: pub, ACSVerifiers: []ingress.Verifier{staticVerifier{true}}, Registerer: reg,
		MaxBodyBytes: 4096, MaxBodyBytesInFlight: 4096, EnqueueTimeout: 200 * time.Millisecond})
	big := callConnected + strings.Repeat(" ", 3000)
	first := make(chan int, 1)
	go func() {
		first <- do(t, h, testRequest(http.MethodPost, "/acs/callbacks", "application/json", big)).status
	}()
	time.Sleep(50 * time.Millisecond) // the first holds the budget, waiting for the queue
	if r := do(t, h, testRequest(http.MethodPost, "/acs/callbacks", "application/json", big)); r.status != 503 || r.header.Get("Retry-After") == "" {
		t.Errorf("a body beyond the budget: %d, want 503 with Retry-After", r.status)
	}
	if metrictest.Value(t, reg, "hookbridge_ingress_requests_total", "cause", ingress.CauseOverloaded) != 1 {
		t.Error("the wait for the budget is not counted as overloaded")
	}
	close(pub.open)
	<-first
	for range 3 {
		if r := do(t, h, testRequest(http.MethodPost, "/acs/callbacks", "application/json", big)); r.status != 200 {
			t.Fatalf("after the budget was released: %d", r.status)
		}
	}
}

// gateSender is a queue whose sends wait for open.
type gateSender struct{ open chan struct{} }

func (g gateSender) SendBatch(ctx context.Context, _ []relay.Message) error {
	select {
	case <-g.open:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// TestBodiesHeldByAStalledQueueCount: a request that gave up waiting for a
// stalled queue (503) keeps its share of MaxBodyBytesInFlight while the
// group commit still holds its messages, so requests piling up behind a
// stalled queue cannot hold more than the bound; the share comes back when
// the commit ends.
func TestBodiesHeldByAStalledQueueCount(t *testing.T) {
	t.Parallel()
	send := gateSender{open: make(chan struct{})}
	b, err := relay.NewBatcher(send, relay.BatchConfig{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	go b.Run(context.Background())
	t.Cleanup(b.Close)
	reg := prometheus.NewRegistry()
	h, _ := newServer(t, ingress.Config{Publisher: b, ACSVerifiers: []ingress.Verifier{staticVerifier{true}}, Registerer: reg,
		MaxBodyBytes: 4096, MaxBodyBytesInFlight: 4096, EnqueueTimeout: 200 * time.Millisecond})
	big := callConnected + strings.Repeat(" ", 3000)
	if r := do(t, h, testRequest(http.MethodPost, "/acs/callbacks", "application/json", big)); r.status != 503 {
		t.Fatalf("a request the stalled queue does not take in time: %d, want 503", r.status)
	}
	if r := do(t, h, testRequest(http.MethodPost, "/acs/callbacks", "application/json", big)); r.status != 503 {
		t.Errorf("a second body while the first's messages are still held: %d, want 503", r.status)
	}
	if n := metrictest.Value(t, reg, "hookbridge_ingress_requests_total", "cause", ingress.CauseOverloaded); n != 1 {
		t.Errorf("requests refused for the body budget: %v, want 1 (the second)", n)
	}
	close(send.open)
	testwait.Until(t, 10*time.Second, "a body is accepted once the stalled commit ended", func() bool {
		return do(t, h, testRequest(http.MethodPost, "/acs/callbacks", "application/json", big)).status == 200
	})
}

func TestRateBurstNeedsRateLimit(t *testing.T) {
	t.Parallel()
	_, err := ingress.New(ingress.Config{Publisher: &fakePublisher{}, ACSVerifiers: []ingress.Verifier{staticVerifier{true}}, RateBurst: 10})
	if err == nil || !strings.Contains(err.Error(), "--rate-limit") {
		t.Fatalf("burst without a rate: %v, want an error naming --rate-limit", err)
	}
	for name, change := range map[string]func(*ingress.Config){
		"unknown replay defence":      func(c *ingress.Config) { c.ReplayDefence = "sometimes" },
		"negative drain delay":        func(c *ingress.Config) { c.DrainDelay = -time.Second },
		"bodies in flight below body": func(c *ingress.Config) { c.MaxBodyBytesInFlight = 1024 },
	} {
		c := ingress.Config{Publisher: &fakePublisher{}, ACSVerifiers: []ingress.Verifier{staticVerifier{}}}
		change(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if over := int64(ingress.MaxReplayCacheSize) + 1; over <= math.MaxInt { // an int holds it (64 bits)
		c := ingress.Config{Publisher: &fakePublisher{}, ACSVerifiers: []ingress.Verifier{staticVerifier{}}, ReplayCacheSize: int(over)}
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "--replay-cache-size") {
			t.Errorf("replay cache above its bound: %v, want an error naming --replay-cache-size", err)
		}
	}
}
