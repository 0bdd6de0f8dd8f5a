package console_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/hookbridge/hookbridge/internal/console"
	"github.com/hookbridge/hookbridge/internal/sqlitetest"
	"github.com/hookbridge/hookbridge/internal/testlog"
	"github.com/hookbridge/hookbridge/internal/testrun"
	"github.com/hookbridge/hookbridge/relay"
	"github.com/hookbridge/hookbridge/relay/relaytest"
	"github.com/hookbridge/hookbridge/relay/sqlite"
	"github.com/hookbridge/hookbridge/schemas"
)

const callID = "7f3c9a2e-call-correlation-0001"

// event builds the queue message the ingress would have queued.
func event(t testing.TB, id, typ, correlation string, data string) relay.Message {
	t.Helper()
	e := schemas.Event{ID: id, Source: "calling/callConnections/c1", Type: typ, Time: "2026-11-30T09:00:00Z",
		Data: json.RawMessage(data), PartitionKey: correlation}
	m, err := relay.NewMessage(&e)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// fill puts a call in the queue: its IncomingCall dead-lettered by the
// backend, its CallConnected waiting behind it, plus a keyless event whose
// body and type carry markup and is dead-lettered too. It returns the
// hostile message's event ID.
func fill(t testing.TB, q *sqlite.Queue) {
	t.Helper()
	ctx := context.Background()
	msgs := []relay.Message{
		event(t, "evt-incoming", "Microsoft.Communication.IncomingCall", callID, `{"correlationId":"`+callID+`","to":{"rawId":"4:+15550100"}}`),
		event(t, "evt-connected", "Microsoft.Communication.CallConnected", callID, `{"correlationId":"`+callID+`","callConnectionId":"c1"}`),
		event(t, "evt-hostile", `Evil<script>alert("type")</script>`, "", `{"note":"</pre><script>alert(document.cookie)</script><img src=x onerror=alert(1)>"}`),
	}
	if err := q.SendBatch(ctx, msgs); err != nil {
		t.Fatal(err)
	}
	got, err := q.Receive(ctx, 2)
	if err != nil || len(got) != 2 {
		t.Fatalf("receive: %d, %v", len(got), err)
	}
	for _, m := range got {
		desc := "backend answered 400 Bad Request: unknown number"
		if m.SessionID == "" {
			desc = `<b onmouseover="alert(2)">bold</b>`
		}
		if err := q.DeadLetter(ctx, m, "BackendRejected", desc); err != nil {
			t.Fatal(err)
		}
	}
}

type fixture struct {
	q    *sqlite.Queue
	srv  *httptest.Server
	logs *testlog.Buffer
	c    *http.Client
}

func newFixture(t *testing.T, tokens ...console.Token) *fixture {
	t.Helper()
	q := sqlitetest.Open(t, sqlite.Config{})
	fill(t, q)
	logs := &testlog.Buffer{}
	c, err := console.New(console.Config{Queue: q, QueueName: "sqlite:test.db", Tokens: tokens,
		Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(c)
	t.Cleanup(srv.Close)
	jar, _ := cookiejar.New(nil)
	client := &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	return &fixture{q: q, srv: srv, logs: logs, c: client}
}

func (f *fixture) get(t *testing.T, path string) (int, string, http.Header) {
	t.Helper()
	resp, err := f.c.Get(f.srv.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

func (f *fixture) post(t *testing.T, path string, form url.Values, header map[string]string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, f.srv.URL+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := f.c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([0-9a-f]+)"`)

// csrf loads a page and returns its CSRF token.
func (f *fixture) csrf(t *testing.T) string {
	t.Helper()
	_, body, _ := f.get(t, "/dlq")
	m := csrfRE.FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no CSRF token on /dlq:\n%s", body)
	}
	return m[1]
}

func (f *fixture) counts(t *testing.T) (active, dead int64) {
	t.Helper()
	s, err := f.q.Summary(context.Background(), relay.SummaryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return s.Active, s.DeadLettered
}

// deadSeq returns the sequence number of the dead-lettered event id.
func (f *fixture) deadSeq(t *testing.T, eventID string) int64 {
	t.Helper()
	r, err := f.q.Find(context.Background(), relay.FindQuery{ID: eventID})
	if err != nil || len(r.Messages) != 1 || r.Messages[0].State != relay.StateDeadLettered {
		t.Fatalf("find %s: %+v, %v", eventID, r.Messages, err)
	}
	return r.Messages[0].SequenceNumber
}

func TestPages(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	hostile := f.deadSeq(t, "evt-hostile")
	tests := []struct {
		path  string
		want  []string // substrings, in order
		avoid []string
	}{
		{"/", []string{`id="active">1<`, `id="deadlettered"><a href="/dlq">2<`, callID, "Microsoft.Communication.CallConnected", "waiting",
			"BackendRejected", "2"}, nil},
		// A call found by its correlation ID: both events in order, each with its state.
		{"/find?q=" + callID, []string{"Call", callID, "dead-lettered", "Microsoft.Communication.IncomingCall", "unknown number",
			"waiting", "Microsoft.Communication.CallConnected"}, nil},
		// Found by an event ID: the whole call is shown.
		{"/find?q=evt-connected", []string{"Microsoft.Communication.IncomingCall", "Microsoft.Communication.CallConnected"}, nil},
		{"/find?q=nothing-like-this", []string{`id="nothing"`}, nil},
		{"/dlq?reason=BackendRejected", []string{"Microsoft.Communication.IncomingCall", "unknown number"}, nil},
		{"/dlq?type=Microsoft.Communication.IncomingCall", []string{"Microsoft.Communication.IncomingCall"}, []string{"Evil"}},
		{"/dlq/" + strconv.FormatInt(hostile, 10), []string{"evt-hostile", "BackendRejected"}, nil},
	}
	for _, tt := range tests {
		status, body, h := f.get(t, tt.path)
		if status != http.StatusOK {
			t.Errorf("GET %s: %d\n%s\n%s", tt.path, status, body, f.logs.String())
			continue
		}
		rest := body
		for _, w := range tt.want {
			i := strings.Index(rest, w)
			if i < 0 {
				t.Errorf("GET %s: %q missing (or out of order)", tt.path, w)
				break
			}
			rest = rest[i+len(w):]
		}
		for _, a := range tt.avoid {
			if strings.Contains(body, a) {
				t.Errorf("GET %s: %q should not be there", tt.path, a)
			}
		}
		if h.Get("Cache-Control") != "no-store" {
			t.Errorf("GET %s: Cache-Control %q, want no-store", tt.path, h.Get("Cache-Control"))
		}
	}
	if status, body, _ := f.get(t, "/dlq?since=yesterday"); status != http.StatusBadRequest || !strings.Contains(body, "RFC 3339") {
		t.Errorf("bad since: %d, %s", status, body)
	}
	if status, _, _ := f.get(t, "/dlq/999999"); status != http.StatusNotFound {
		t.Errorf("missing dead letter: %d, want 404", status)
	}
}

// TestEscaping: a body, a type and a description carrying markup render as
// text wherever they appear.
func TestEscaping(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	seq := f.deadSeq(t, "evt-hostile")
	for _, path := range []string{"/dlq/" + strconv.FormatInt(seq, 10), "/dlq", "/find?q=evt-hostile", "/"} {
		_, body, _ := f.get(t, path)
		for _, bad := range []string{"<script>alert", "<img src=x", `<b onmouseover`, "</pre><script>"} {
			if strings.Contains(body, bad) {
				t.Errorf("GET %s renders %q unescaped", path, bad)
			}
		}
		if path != "/" && !strings.Contains(body, "&lt;script&gt;") {
			t.Errorf("GET %s: the escaped markup is missing", path)
		}
		// The only scripts are the console's own file.
		if n := strings.Count(body, "<script"); n != 1 {
			t.Errorf("GET %s has %d <script elements, want 1", path, n)
		}
	}
}

func TestSecurityHeaders(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	for i, path := range []string{"/", "/dlq", "/static/console.js"} {
		_, _, h := f.get(t, path)
		if c := h.Get("Set-Cookie"); i == 0 && (!strings.Contains(c, "HttpOnly") || !strings.Contains(c, "SameSite=Lax")) {
			t.Errorf("session cookie %q", c)
		}
		csp := h.Get("Content-Security-Policy")
		if !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe-inline") || !strings.Contains(csp, "frame-ancestors 'none'") {
			t.Errorf("GET %s: CSP %q", path, csp)
		}
		if h.Get("X-Frame-Options") != "DENY" || h.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("GET %s: X-Frame-Options %q, X-Content-Type-Options %q", path, h.Get("X-Frame-Options"), h.Get("X-Content-Type-Options"))
		}
	}
}

// TestLoopbackHost: without a token, only loopback names are answered
// (DNS rebinding).
func TestLoopbackHost(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	for host, want := range map[string]int{
		"127.0.0.1:9092": 200, "localhost:9092": 200, "[::1]:9092": 200, "LOCALHOST": 200,
		"attacker.example:9092": 403, "10.0.0.5:9092": 403, "127.0.0.1.attacker.example": 403,
	} {
		req, _ := http.NewRequest(http.MethodGet, f.srv.URL+"/", nil)
		req.Host = host
		resp, err := f.c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("Host %s: %d, want %d", host, resp.StatusCode, want)
		}
	}
}

func TestLogin(t *testing.T) {
	t.Parallel()
	const secret = "s3cret-token-0123456789abcdef"
	f := newFixture(t, console.Token{Name: "alice", Secret: secret})
	// Any host is fine with a token.
	if status, _, h := f.get(t, "/dlq?reason=x"); status != http.StatusSeeOther || h.Get("Location") != "/login?next=%2Fdlq%3Freason%3Dx" {
		t.Fatalf("GET /dlq before login: %d to %q", status, h.Get("Location"))
	}
	_, page, _ := f.get(t, "/login")
	token := csrfRE.FindStringSubmatch(page)[1]
	if status, _ := f.post(t, "/login", url.Values{"csrf": {token}, "token": {"wrong-token-0123456789"}}, nil); status != http.StatusUnauthorized {
		t.Errorf("wrong token: %d, want 401", status)
	}
	if status, _ := f.post(t, "/login", url.Values{"token": {secret}}, nil); status != http.StatusForbidden {
		t.Errorf("login without CSRF token: %d, want 403", status)
	}
	if status, _ := f.post(t, "/dlq/purge", url.Values{"csrf": {token}, "scope": {"filter"}}, nil); status != http.StatusUnauthorized {
		t.Errorf("POST before login: %d, want 401", status)
	}
	status, _ := f.post(t, "/login", url.Values{"csrf": {token}, "token": {secret}, "next": {"https://evil.example/"}}, nil)
	if status != http.StatusSeeOther {
		t.Fatalf("login: %d", status)
	}
	status, body, _ := f.get(t, "/")
	if status != http.StatusOK || !strings.Contains(body, "alice") {
		t.Fatalf("GET / after login: %d", status)
	}
	if strings.Contains(body, secret) {
		t.Error("the token is rendered")
	}
	// The session's CSRF token changed with the session at login.
	if status, _ := f.post(t, "/logout", url.Values{"csrf": {token}}, nil); status != http.StatusForbidden {
		t.Errorf("logout with the pre-login CSRF token: %d, want 403", status)
	}
	if status, _ := f.post(t, "/logout", url.Values{"csrf": {f.csrf(t)}}, nil); status != http.StatusSeeOther {
		t.Errorf("logout: %d", status)
	}
	if status, _, _ := f.get(t, "/"); status != http.StatusSeeOther {
		t.Errorf("GET / after logout: %d, want 303", status)
	}
	logs := f.logs.String()
	if strings.Contains(logs, secret) || !strings.Contains(logs, "identity=alice") || !strings.Contains(logs, "login refused") {
		t.Errorf("logs:\n%s", logs)
	}
}

// TestLoginNextStaysOnTheConsole: the page to return to after login is a
// path on this console; anything a browser could read as another site
// (a scheme, "//", a backslash, a control character it drops) goes to "/".
func TestLoginNextStaysOnTheConsole(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	for next, want := range map[string]string{
		"/dlq?reason=x":         "/dlq?reason=x",
		"https://evil.example/": "/",
		"//evil.example/":       "/",
		"/\\evil.example/":      "/",
		"/\t/evil.example":      "/",
		"/\t\\evil.example":     "/",
		"/\n/evil.example":      "/",
		"/x\x7f":                "/",
	} {
		status, _, h := f.get(t, "/login?next="+url.QueryEscape(next))
		if status != http.StatusSeeOther || h.Get("Location") != want {
			t.Errorf("next %q: %d to %q, want a redirect to %q", next, status, h.Get("Location"), want)
		}
	}
}

// TestCrossSiteFetchesRefused: another site may link to a page (a
// navigation) but not have the browser fetch one in the background.
func TestCrossSiteFetchesRefused(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	for _, tc := range []struct {
		site, mode string
		want       int
	}{
		{"", "", http.StatusOK}, // not a browser
		{"same-origin", "cors", http.StatusOK},
		{"none", "navigate", http.StatusOK},
		{"cross-site", "navigate", http.StatusOK},
		{"cross-site", "no-cors", http.StatusForbidden},
		{"same-site", "cors", http.StatusForbidden},
	} {
		req, _ := http.NewRequest(http.MethodGet, f.srv.URL+"/dlq", nil)
		if tc.site != "" {
			req.Header.Set("Sec-Fetch-Site", tc.site)
			req.Header.Set("Sec-Fetch-Mode", tc.mode)
		}
		resp, err := f.c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("Sec-Fetch-Site %q, Sec-Fetch-Mode %q: %d, want %d", tc.site, tc.mode, resp.StatusCode, tc.want)
		}
	}
}

// TestCSRF: a POST without the session's token, or from another origin,
// is refused and changes nothing.
func TestCSRF(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	token := f.csrf(t)
	seq := strconv.FormatInt(f.deadSeq(t, "evt-incoming"), 10)
	confirm := url.Values{"step": {"confirm"}, "seq": {seq}}
	tests := []struct {
		name   string
		csrf   string
		header map[string]string
	}{
		{"no token", "", nil},
		{"wrong token", strings.Repeat("0", 64), nil},
		{"other origin", token, map[string]string{"Origin": "http://evil.example"}},
		{"cross-site fetch", token, map[string]string{"Sec-Fetch-Site": "cross-site"}},
		{"same-site is not same-origin", token, map[string]string{"Sec-Fetch-Site": "same-site"}},
	}
	for _, tt := range tests {
		form := url.Values{"csrf": {tt.csrf}}
		for k, v := range confirm {
			form[k] = v
		}
		if status, _ := f.post(t, "/dlq/replay", form, tt.header); status != http.StatusForbidden {
			t.Errorf("%s: %d, want 403", tt.name, status)
		}
	}
	if active, dead := f.counts(t); active != 1 || dead != 2 {
		t.Fatalf("refused requests changed the queue: active %d, dead-lettered %d", active, dead)
	}
	// Another browser's token does not work with this browser's cookie.
	other := newFixture(t)
	if status, _ := f.post(t, "/dlq/replay", url.Values{"csrf": {other.csrf(t)}, "step": {"confirm"}, "seq": {seq}}, nil); status != http.StatusForbidden {
		t.Errorf("another session's token: %d, want 403", status)
	}
	form := url.Values{"csrf": {token}, "step": {"confirm"}, "seq": {seq}}
	if status, body := f.post(t, "/dlq/replay", form, map[string]string{"Origin": f.srv.URL, "Sec-Fetch-Site": "same-origin"}); status != http.StatusOK {
		t.Errorf("same-origin replay: %d\n%s", status, body)
	}
}

// TestReplay: preview (a dry run that changes nothing), then confirm; the
// copy is in the queue and the action is logged.
func TestReplay(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	token := f.csrf(t)
	status, body := f.post(t, "/dlq/replay", url.Values{"csrf": {token}, "scope": {"filter"}, "partition_key": {callID}}, nil)
	if status != http.StatusOK || !strings.Contains(body, "1 dead-lettered messages would be replayed") {
		t.Fatalf("preview: %d\n%s", status, body)
	}
	if want := `href="/dlq?partition_key=` + callID + `"`; !strings.Contains(body, want) {
		t.Errorf("the preview's Cancel link does not keep the filter (%s):\n%s", want, body)
	}
	if active, dead := f.counts(t); active != 1 || dead != 2 {
		t.Fatalf("the preview changed the queue: active %d, dead-lettered %d", active, dead)
	}
	// The confirm form carries the previewed sequence numbers.
	seqs := regexp.MustCompile(`name="seq" value="(\d+)"`).FindAllStringSubmatch(body, -1)
	if len(seqs) != 1 || seqs[0][1] != strconv.FormatInt(f.deadSeq(t, "evt-incoming"), 10) {
		t.Fatalf("confirm form seqs: %v", seqs)
	}
	status, body = f.post(t, "/dlq/replay", url.Values{"csrf": {token}, "step": {"confirm"}, "partition_key": {callID}, "seq": {seqs[0][1]}}, nil)
	if status != http.StatusOK || !strings.Contains(body, "replayed 1 of 1 selected messages") {
		t.Fatalf("confirm: %d\n%s", status, body)
	}
	if active, dead := f.counts(t); active != 2 || dead != 1 {
		t.Errorf("after replay: active %d, dead-lettered %d; want 2, 1", active, dead)
	}
	r, err := f.q.Find(context.Background(), relay.FindQuery{ID: "evt-incoming"})
	if err != nil || len(r.Messages) != 1 || r.Messages[0].State != relay.StateWaiting || relay.ReplayCount(r.Messages[0].Properties) != 1 {
		t.Errorf("the replayed copy: %+v, %v", r.Messages, err)
	}
	if logs := f.logs.String(); !strings.Contains(logs, "dead letters replayed") || !strings.Contains(logs, "done=1") || !strings.Contains(logs, "remote_addr=127.0.0.1") {
		t.Errorf("action log:\n%s", logs)
	}
	// Confirming again finds nothing left: nothing happens twice, and the
	// page and the log say less was done than was confirmed.
	status, body = f.post(t, "/dlq/replay", url.Values{"csrf": {token}, "step": {"confirm"}, "seq": {seqs[0][1]}}, nil)
	if status != http.StatusOK || !strings.Contains(body, "replayed 0 of 0") || !strings.Contains(body, "Replayed 0 of the 1 messages you confirmed") {
		t.Errorf("second confirm: %d\n%s", status, body)
	}
	if logs := f.logs.String(); !strings.Contains(logs, "level=WARN") || !strings.Contains(logs, "fewer than confirmed") || !strings.Contains(logs, "sequence_numbers="+seqs[0][1]) {
		t.Errorf("a replay that did less than confirmed is not logged as a warning with its sequence numbers:\n%s", logs)
	}
	// Selecting nothing is an error that says what to do.
	if status, body := f.post(t, "/dlq/replay", url.Values{"csrf": {token}, "scope": {"selected"}}, nil); status != http.StatusBadRequest || !strings.Contains(body, "tick the messages") {
		t.Errorf("empty selection: %d\n%s", status, body)
	}
}

// heldSend is a queue whose first SendBatch waits for release, after
// closing started.
type heldSend struct {
	console.Queue
	started, release chan struct{}
	once             sync.Once
}

func (h *heldSend) SendBatch(ctx context.Context, msgs []relay.Message) error {
	h.once.Do(func() {
		close(h.started)
		<-h.release
	})
	return h.Queue.SendBatch(ctx, msgs)
}

// TestStopActionsEndsReplayAtChunk: a console shutting down stops a replay
// in progress at its next chunk; the chunk being sent is finished, the rest
// stay dead-lettered, and no message is both replayed and left in the
// dead-letter queue.
func TestStopActionsEndsReplayAtChunk(t *testing.T) {
	t.Parallel()
	q := sqlitetest.Open(t, sqlite.Config{})
	const n = 60 // more than one chunk of 50
	var msgs []relay.Message
	for i := range n {
		msgs = append(msgs, event(t, fmt.Sprintf("evt-%d", i), "Microsoft.Communication.CallConnected", fmt.Sprintf("call-%d", i), `{}`))
	}
	ctx := context.Background()
	if err := q.SendBatch(ctx, msgs); err != nil {
		t.Fatal(err)
	}
	relaytest.DeadLetterAll(t, q, n, "BackendRejected", "test")
	held := &heldSend{Queue: q, started: make(chan struct{}), release: make(chan struct{})}
	c, err := console.New(console.Config{Queue: held, QueueName: "sqlite:test.db"})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(c)
	t.Cleanup(srv.Close)
	jar, _ := cookiejar.New(nil)
	f := &fixture{q: q, srv: srv, c: &http.Client{Jar: jar}}
	form := url.Values{"csrf": {f.csrf(t)}, "step": {"confirm"}}
	list, err := q.ListDeadLetters(ctx, 0, n)
	if err != nil || len(list) != n {
		t.Fatalf("list: %d, %v", len(list), err)
	}
	for _, d := range list {
		form.Add("seq", strconv.FormatInt(d.SequenceNumber, 10))
	}
	type answer struct {
		status int
		body   string
	}
	done := make(chan answer, 1)
	go func() {
		status, body := f.post(t, "/dlq/replay", form, nil)
		done <- answer{status, body}
	}()
	select {
	case <-held.started:
	case <-time.After(20 * time.Second):
		t.Fatal("the replay never sent its first chunk")
	}
	c.StopActions()
	close(held.release)
	a := <-done
	if !strings.Contains(a.body, "The console is shutting down, so the replay stopped") {
		t.Errorf("the stopped replay's page does not say why it stopped: %d\n%s", a.status, a.body)
	}
	// The chunk in hand was sending: it finishes (a send cut off could
	// queue the copies without saying so); the next is never started.
	if active, dead := f.counts(t); active != 50 || dead != 10 {
		t.Errorf("after a replay stopped during its first chunk: active %d, dead-lettered %d; want the first chunk's 50 replayed and the other 10 still dead-lettered", active, dead)
	}
}

// TestPurge: the confirmation needs the count typed; without it nothing is
// deleted.
func TestPurge(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	token := f.csrf(t)
	seq := strconv.FormatInt(f.deadSeq(t, "evt-hostile"), 10)
	status, body := f.post(t, "/dlq/purge", url.Values{"csrf": {token}, "scope": {"selected"}, "seq": {seq}}, nil)
	if status != http.StatusOK || !strings.Contains(body, "1 dead-lettered messages would be purged") || !strings.Contains(body, `name="confirm_count"`) {
		t.Fatalf("preview: %d\n%s", status, body)
	}
	for _, typed := range []string{"", "2", "yes"} {
		status, body = f.post(t, "/dlq/purge", url.Values{"csrf": {token}, "step": {"confirm"}, "seq": {seq}, "confirm_count": {typed}}, nil)
		if status != http.StatusBadRequest || !strings.Contains(body, "type their number, 1") {
			t.Errorf("confirm_count %q: %d", typed, status)
		}
	}
	if _, dead := f.counts(t); dead != 2 {
		t.Fatalf("purged without confirmation: %d dead-lettered left", dead)
	}
	status, body = f.post(t, "/dlq/purge", url.Values{"csrf": {token}, "step": {"confirm"}, "seq": {seq}, "confirm_count": {"1"}}, nil)
	if status != http.StatusOK || !strings.Contains(body, "purged 1 of 1") {
		t.Fatalf("purge: %d\n%s", status, body)
	}
	if active, dead := f.counts(t); active != 1 || dead != 1 {
		t.Errorf("after purge: active %d, dead-lettered %d", active, dead)
	}
	if !strings.Contains(f.logs.String(), "dead letters purged") {
		t.Errorf("no purge log:\n%s", f.logs.String())
	}
}

func TestParseTokens(t *testing.T) {
	t.Parallel()
	good := []struct {
		in   string
		want []console.Token
	}{
		{"", nil},
		{"0123456789abcdef", []console.Token{{Secret: "0123456789abcdef"}}},
		{"alice:0123456789abcdef, bob:fedcba9876543210", []console.Token{{"alice", "0123456789abcdef"}, {"bob", "fedcba9876543210"}}},
		// A colon inside a token that does not start with a name.
		{"a b:0123456789abcdef", []console.Token{{Secret: "a b:0123456789abcdef"}}},
	}
	for _, tt := range good {
		got, err := console.ParseTokens(tt.in)
		if err != nil || fmt.Sprint(got) != fmt.Sprint(tt.want) {
			t.Errorf("ParseTokens(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
	for _, bad := range []string{"short", "alice:short", "0123456789abcdef,x"} {
		if _, err := console.ParseTokens(bad); err == nil || strings.Contains(err.Error(), "short") && !strings.Contains(err.Error(), "characters") {
			t.Errorf("ParseTokens(%q): %v, want an error", bad, err)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	q := sqlitetest.Open(t, sqlite.Config{})
	valid := console.Config{Queue: q, MetricsFrom: []string{"http://127.0.0.1:9090/metrics"}, MetricsInterval: time.Second}
	if err := valid.Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	for name, change := range map[string]func(*console.Config){
		"no queue":          func(c *console.Config) { c.Queue = nil },
		"metrics not http":  func(c *console.Config) { c.MetricsFrom = []string{"ftp://x/metrics"} },
		"metrics no host":   func(c *console.Config) { c.MetricsFrom = []string{"http:///metrics"} },
		"interval too fast": func(c *console.Config) { c.MetricsInterval = time.Millisecond },
		"short token":       func(c *console.Config) { c.Tokens = []console.Token{{Secret: "x"}} },
	} {
		c := valid
		change(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// TestOverviewSpoolAndRates: the spool's depth and oldest event, and rates
// from a scraped admin listener, on the overview.
func TestOverviewSpoolAndRates(t *testing.T) {
	t.Parallel()
	q := sqlitetest.Open(t, sqlite.Config{})
	spool := sqlitetest.Open(t, sqlite.Config{})
	if err := spool.SendBatch(context.Background(), []relay.Message{
		event(t, "s1", "Microsoft.Communication.CallConnected", "call-s", `{}`),
		event(t, "s2", "Microsoft.Communication.PlayCompleted", "call-s", `{}`),
	}); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	delivered := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hookbridge_worker_deliveries_total"}, []string{"outcome"})
	reg.MustRegister(delivered)
	admin := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer admin.Close()
	c, err := console.New(console.Config{Queue: q, Spool: spool, SpoolName: "sqlite:spool.db",
		MetricsFrom: []string{admin.URL + "/metrics"}, MetricsInterval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	stop := testrun.Start(t, c.Run)
	defer func() {
		if err := stop(); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	srv := httptest.NewServer(c)
	defer srv.Close()
	f := &fixture{srv: srv, c: srv.Client()}
	delivered.WithLabelValues("completed").Add(5)
	deadline := time.Now().Add(10 * time.Second)
	for {
		delivered.WithLabelValues("completed").Add(10)
		_, body, _ := f.get(t, "/")
		if strings.Contains(body, `id="spool">2<`) && strings.Contains(body, "waiting to forward since") &&
			regexp.MustCompile(`worker deliveries</td><td>completed</td><td class="num">[1-9][0-9.]*/s`).MatchString(body) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the overview never showed the spool and a delivery rate:\n%s", body)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestLoginLimitIsPerClient: a client that keeps guessing gets 429, and
// another address can still log in.
func TestLoginLimitIsPerClient(t *testing.T) {
	t.Parallel()
	const secret = "s3cret-token-0123456789abcdef"
	q := sqlitetest.Open(t, sqlite.Config{})
	c, err := console.New(console.Config{Queue: q, QueueName: "sqlite:test.db", Tokens: []console.Token{{Name: "alice", Secret: secret}}})
	if err != nil {
		t.Fatal(err)
	}
	login := func(addr, token string) int {
		code, _ := loginAs(t, c, addr, token, nil)
		return code
	}
	limited := false
	for range 30 {
		if code := login("192.0.2.1:4000", "wrong-token-0123456789"); code == http.StatusTooManyRequests {
			limited = true
			break
		} else if code != http.StatusUnauthorized {
			t.Fatalf("wrong token: %d, want 401 or 429", code)
		}
	}
	if !limited {
		t.Fatal("30 wrong tokens in a row from one address were never limited")
	}
	if code := login("192.0.2.1:4001", secret); code != http.StatusTooManyRequests {
		t.Errorf("the limited address, another port: %d, want 429", code)
	}
	if code := login("198.51.100.7:5000", secret); code != http.StatusSeeOther {
		t.Errorf("another address while the first is limited: %d, want 303 (logged in)", code)
	}
}

// TestLoginLimitBehindTrustedProxy: behind a reverse proxy named with
// TrustedProxies, each client keeps its own login limit (by the address the
// proxy appended to X-Forwarded-For), a client cannot escape its limit by
// sending X-Forwarded-For itself, and the action log names the client and
// the proxy.
func TestLoginLimitBehindTrustedProxy(t *testing.T) {
	t.Parallel()
	const secret = "s3cret-token-0123456789abcdef"
	const proxy = "10.0.0.5:4000"
	q := sqlitetest.Open(t, sqlite.Config{})
	logs := &testlog.Buffer{}
	c, err := console.New(console.Config{Queue: q, QueueName: "sqlite:test.db",
		Tokens:         []console.Token{{Name: "alice", Secret: secret}},
		TrustedProxies: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24")},
		Logger:         slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	via := func(xff string) map[string]string { return map[string]string{"X-Forwarded-For": xff} }
	limited := false
	for range 30 {
		code, _ := loginAs(t, c, proxy, "wrong-token-0123456789", via("192.0.2.1"))
		if code == http.StatusTooManyRequests {
			limited = true
			break
		} else if code != http.StatusUnauthorized {
			t.Fatalf("wrong token: %d, want 401 or 429", code)
		}
	}
	if !limited {
		t.Fatal("30 wrong tokens in a row from one client behind the proxy were never limited")
	}
	if code, _ := loginAs(t, c, proxy, secret, via("198.51.100.99, 192.0.2.1")); code != http.StatusTooManyRequests {
		t.Errorf("the limited client, naming another address itself: %d, want 429", code)
	}
	if code, _ := loginAs(t, c, proxy, secret, via("198.51.100.7")); code != http.StatusSeeOther {
		t.Errorf("another client behind the same proxy: %d, want 303 (logged in)", code)
	}
	if got := logs.String(); !strings.Contains(got, "remote_addr=198.51.100.7 via=10.0.0.5 identity=alice") {
		t.Errorf("the login log does not name the client and the proxy:\n%s", got)
	}
}

// loginAs posts token to c's login form from addr, with the CSRF cookie and
// token of a login page fetched from there and the given headers; it
// returns the status and the response's cookies.
func loginAs(t *testing.T, c http.Handler, addr, token string, header map[string]string) (int, []*http.Cookie) {
	t.Helper()
	get := httptest.NewRequest(http.MethodGet, "/login", nil)
	get.RemoteAddr = addr
	page := httptest.NewRecorder()
	c.ServeHTTP(page, get)
	m := csrfRE.FindStringSubmatch(page.Body.String())
	if m == nil {
		t.Fatalf("no CSRF token on the login page: %d", page.Code)
	}
	post := httptest.NewRequest(http.MethodPost, "/login", strings.NewReader(url.Values{"csrf": {m[1]}, "token": {token}}.Encode()))
	post.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for k, v := range header {
		post.Header.Set(k, v)
	}
	for _, ck := range page.Result().Cookies() {
		post.AddCookie(ck)
	}
	post.RemoteAddr = addr
	rec := httptest.NewRecorder()
	c.ServeHTTP(rec, post)
	return rec.Code, rec.Result().Cookies()
}

// TestSessionCookieSecureBehindTLS: the session cookie is Secure when a
// reverse proxy says the browser came over HTTPS, and not over plain HTTP
// (where a browser would not send it back).
func TestSessionCookieSecureBehindTLS(t *testing.T) {
	t.Parallel()
	const secret = "s3cret-token-0123456789abcdef"
	c, err := console.New(console.Config{Queue: sqlitetest.Open(t, sqlite.Config{}), QueueName: "sqlite:test.db",
		Tokens: []console.Token{{Name: "alice", Secret: secret}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		header map[string]string
		secure bool
	}{
		{nil, false},
		{map[string]string{"X-Forwarded-Proto": "https"}, true},
		{map[string]string{"X-Forwarded-Proto": "http"}, false},
	} {
		code, cookies := loginAs(t, c, "192.0.2.9:1000", secret, tc.header)
		if code != http.StatusSeeOther || len(cookies) == 0 {
			t.Fatalf("login %v: %d, cookies %v", tc.header, code, cookies)
		}
		for _, ck := range cookies {
			if ck.Secure != tc.secure {
				t.Errorf("login %v: cookie %s Secure %v, want %v", tc.header, ck.Name, ck.Secure, tc.secure)
			}
		}
	}
}
