package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hookbridge/hookbridge/internal/freeport"
	"github.com/hookbridge/hookbridge/internal/sbemu"
	"github.com/hookbridge/hookbridge/internal/sbemu/sbemutest"
	"github.com/hookbridge/hookbridge/internal/testlog"
	"github.com/hookbridge/hookbridge/relay"
)

const spoolTestKey = "spool-test-key-0123456789abcdef"

// spoolEmulator starts an emulator with the session-enabled, deduplicating
// queue the deployment uses.
func spoolEmulator(t *testing.T) *sbemu.Server {
	t.Helper()
	return emulate(t, sbemu.QueueConfig{Name: "hookbridge-events", RequiresSession: true,
		RequiresDuplicateDetection: true, DuplicateDetectionHistoryTimeWindow: 10 * time.Minute, LockDuration: 10 * time.Second})
}

// spoolCallEvent is the body of one Call Automation callback of call c.
func spoolCallEvent(id string, c int) string {
	return fmt.Sprintf(`[{"specversion":"1.0","id":%q,"source":"calling/callConnections/c%d","type":"Microsoft.Communication.PlayCompleted","data":{"correlationId":"call-%d"}}]`, id, c, c)
}

// spoolPost sends one callback and returns the status and Retry-After.
func spoolPost(t *testing.T, listen, body string) (int, string) {
	t.Helper()
	resp, err := http.Post("http://"+listen+"/acs/callbacks?key="+spoolTestKey, "application/json", strings.NewReader(body))
	if err != nil {
		t.Errorf("post: %v", err)
		return 0, ""
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("Retry-After")
}

// spoolReadiness is what /readyz answers, with the spool's state.
type spoolReadiness struct {
	status int
	Ready  bool              `json:"ready"`
	Failed map[string]string `json:"failed"`
	State  struct {
		Queue struct {
			Spool struct {
				Mode       string `json:"mode"`
				Messages   int64  `json:"messages"`
				Recovering bool   `json:"recovering"`
			} `json:"spool"`
		} `json:"queue"`
	} `json:"state"`
}

func spoolReadyz(t *testing.T, admin string) spoolReadiness {
	t.Helper()
	var r spoolReadiness
	resp, err := http.Get("http://" + admin + "/readyz")
	if err != nil {
		return r
	}
	defer resp.Body.Close()
	r.status = resp.StatusCode
	json.NewDecoder(resp.Body).Decode(&r)
	return r
}

// waitSpoolDrained waits until /readyz reports an empty spool sending direct.
func waitSpoolDrained(t *testing.T, admin string, timeout time.Duration, logs fmt.Stringer) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		r := spoolReadyz(t, admin)
		if r.status == 200 && r.State.Queue.Spool.Mode == "direct" && r.State.Queue.Spool.Messages == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the spool did not drain: /readyz %+v\nlog:\n%s", r, logs)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// spoolSessionIDs receives (and deletes) every message of session key from the
// emulator's queue and returns their events' ids (cloudEvents_id) in order.
func spoolSessionIDs(t *testing.T, emu *sbemu.Server, key string) []string {
	t.Helper()
	var ids []string
	for _, m := range sbemutest.DrainSession(t, emu, "hookbridge-events", key) {
		id, _ := m.ApplicationProperties[relay.PropID].(string)
		ids = append(ids, id)
	}
	return ids
}

// checkSpooledCalls compares what each call's session holds with what was
// accepted, in order, each once.
func checkSpooledCalls(t *testing.T, emu *sbemu.Server, accepted map[int][]string) {
	t.Helper()
	total := 0
	for c, want := range accepted {
		got := spoolSessionIDs(t, emu, fmt.Sprintf("call-%d", c))
		total += len(got)
		if !slices.Equal(got, want) {
			t.Errorf("call-%d: Service Bus holds %d events, %d were accepted; first difference at %d\n got %v\nwant %v",
				c, len(got), len(want), spoolFirstDiff(got, want), spoolHead(got), spoolHead(want))
		}
	}
	st, err := emu.Stats("hookbridge-events")
	if err != nil {
		t.Fatal(err)
	}
	if st.Active+st.Locked != 0 {
		t.Errorf("Service Bus holds %d events no call accounts for", st.Active+st.Locked)
	}
	t.Logf("%d events in Service Bus, each call's in order", total)
}

func spoolFirstDiff(a, b []string) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func spoolHead(s []string) []string {
	if len(s) > 12 {
		return append(slices.Clone(s[:12]), "…")
	}
	return s
}

// TestIngressSpoolsThroughOutage posts the callbacks of three calls, with
// more calls as load, through the real ingress (in process) on the real
// SDK while the emulator refuses connections for 10 s and then throttles
// every send: every request is answered 200, every event reaches Service
// Bus exactly once in its call's order, and the spool ends empty.
func TestIngressSpoolsThroughOutage(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("a 24 s outage test, skipped in -short mode")
	}
	emu := spoolEmulator(t)
	listen, admin := freeport.Addr(t), freeport.Addr(t)
	environ := map[string]string{envServiceBusConnStr: emu.ConnectionString(), envACSAPIKeys: spoolTestKey}
	logs := &testlog.Buffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"ingress", "--queue", "servicebus:///hookbridge-events", "--listen", listen, "--admin-listen", admin,
			"--spool", "sqlite:" + filepath.Join(t.TempDir(), "spool.db")},
			func(k string) string { return environ[k] }, strings.NewReader(""), io.Discard, logs)
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ingress: %v", err)
		}
	}()
	waitHTTP(t, "http://"+admin+"/readyz")

	const calls = 3 + 9 // three calls watched, nine more as load, all checked
	var mu sync.Mutex
	accepted := map[int][]string{}
	refused := 0
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for c := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				id := fmt.Sprintf("c%d-%05d", c, i)
				status, _ := spoolPost(t, listen, spoolCallEvent(id, c))
				mu.Lock()
				if status == 200 {
					accepted[c] = append(accepted[c], id)
				} else {
					refused++
				}
				mu.Unlock()
				if status != 200 {
					t.Errorf("%s: status %d", id, status)
					return
				}
				// Paced, so that what piles up in the outage drains
				// within the test's budget on a fast machine too.
				time.Sleep(10 * time.Millisecond)
			}
		}()
	}
	phase := func(d time.Duration, what string) {
		time.Sleep(d)
		mu.Lock()
		n := 0
		for _, ids := range accepted {
			n += len(ids)
		}
		mu.Unlock()
		t.Logf("%s after %d accepted events; /readyz %+v", what, n, spoolReadyz(t, admin).State.Queue.Spool)
	}
	phase(time.Second, "refusing connections")
	emu.RefuseConnections(true)
	phase(5*time.Second, "mid-outage")
	if r := spoolReadyz(t, admin); r.status != 200 || r.State.Queue.Spool.Mode != "spooling" || r.State.Queue.Spool.Messages == 0 {
		t.Errorf("/readyz during the outage: %+v, want ready and spooling", r)
	}
	phase(5*time.Second, "throttling")
	emu.RefuseConnections(false)
	emu.ThrottleSends(true)
	// Longer than the forwarder's longest wait between attempts (5 s), so
	// that an attempt meets the throttling.
	phase(7*time.Second, "healthy again")
	emu.ThrottleSends(false)
	phase(2*time.Second, "stopping the senders")
	close(stop)
	wg.Wait()
	waitSpoolDrained(t, admin, 2*time.Minute, logs)
	if refused > 0 {
		t.Fatalf("%d requests were refused", refused)
	}
	checkSpooledCalls(t, emu, accepted)
	busy := 0
	for _, e := range emu.Events() {
		if e.Kind == sbemu.EventFault && strings.Contains(e.Detail, "server-busy") {
			busy++
		}
	}
	if busy == 0 {
		t.Error("no send was rejected with server-busy: the throttling did not bite")
	}
	out := logs.String()
	if !strings.Contains(out, `msg="spooling:`) || !strings.Contains(out, `msg="spool drained`) {
		t.Errorf("no spooling or drained log line:\n%s", out)
	}
	metrics := spoolGet(t, "http://"+admin+"/metrics")
	for _, want := range []string{"hookbridge_spool_spooled_total", "hookbridge_spool_forwarded_total", "hookbridge_spool_messages 0", "hookbridge_spool_oldest_message_age_seconds 0"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

func spoolGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// spooledIngress runs `hookbridge ingress` on the emulator with a spool.
func spooledIngress(t *testing.T, emu *sbemu.Server, spoolURL string, extra ...string) (p *process, listen, admin string) {
	t.Helper()
	listen, admin = freeport.Addr(t), freeport.Addr(t)
	args := append([]string{"ingress", "--queue", "servicebus:///hookbridge-events", "--listen", listen, "--admin-listen", admin,
		"--spool", spoolURL}, extra...)
	p = startWithEnv(t, append(sbEnv(emu), envACSAPIKeys+"="+spoolTestKey), args...)
	waitHTTP(t, "http://"+admin+"/readyz")
	return p, listen, admin
}

// TestSpoolSurvivesSIGKILL kills `hookbridge ingress` while its spool holds
// events; the restarted ingress forwards them, in order, none lost, and
// the calls' new events follow them.
func TestSpoolSurvivesSIGKILL(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("process test skipped in -short mode")
	}
	emu := spoolEmulator(t)
	spoolURL := "sqlite:" + filepath.Join(t.TempDir(), "spool.db")
	first, listen, admin := spooledIngress(t, emu, spoolURL)
	emu.RefuseConnections(true)
	const calls = 3
	accepted := map[int][]string{}
	send := func(listen string, from, to int) {
		for i := from; i < to; i++ {
			for c := range calls {
				id := fmt.Sprintf("c%d-%03d", c, i)
				if status, _ := spoolPost(t, listen, spoolCallEvent(id, c)); status != 200 {
					t.Fatalf("%s: status %d\n%s", id, status, first.stderr.String())
				}
				accepted[c] = append(accepted[c], id)
			}
		}
	}
	send(listen, 0, 20)
	if r := spoolReadyz(t, admin); r.State.Queue.Spool.Messages != 3*20 {
		t.Fatalf("/readyz before the kill: %+v, want 60 events spooled", r)
	}
	first.cmd.Process.Signal(syscall.SIGKILL)
	first.cmd.Wait()

	second, listen, admin := spooledIngress(t, emu, spoolURL)
	if r := spoolReadyz(t, admin); !r.State.Queue.Spool.Recovering {
		t.Errorf("/readyz after the restart: %+v, want recovering", r)
	}
	send(listen, 20, 30) // while Service Bus is still down
	emu.RefuseConnections(false)
	send(listen, 30, 40) // once it is back: behind the spooled events
	waitSpoolDrained(t, admin, 90*time.Second, second.stderr)
	checkSpooledCalls(t, emu, accepted)
	if !strings.Contains(second.stderr.String(), "left by an earlier run") {
		t.Errorf("the restarted ingress did not log the leftovers:\n%s", second.stderr.String())
	}
	second.stop(t)
}

// TestSpoolFull: past --spool-max-messages the ingress answers 503 with
// Retry-After and /readyz fails; once Service Bus is back the spool drains
// and events are accepted again.
func TestSpoolFull(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("process test skipped in -short mode")
	}
	emu := spoolEmulator(t)
	p, listen, admin := spooledIngress(t, emu, "sqlite:"+filepath.Join(t.TempDir(), "spool.db"), "--spool-max-messages", "5")
	emu.RefuseConnections(true)
	accepted := map[int][]string{}
	for i := range 5 {
		id := fmt.Sprintf("c0-%d", i)
		if status, _ := spoolPost(t, listen, spoolCallEvent(id, 0)); status != 200 {
			t.Fatalf("%s: status %d", id, status)
		}
		accepted[0] = append(accepted[0], id)
	}
	status, retryAfter := spoolPost(t, listen, spoolCallEvent("c1-0", 1))
	if status != 503 || retryAfter == "" {
		t.Fatalf("with the spool full: status %d, Retry-After %q; want 503 with Retry-After", status, retryAfter)
	}
	if r := spoolReadyz(t, admin); r.status != 503 || !strings.Contains(r.Failed["queue"], "full") {
		t.Errorf("/readyz with the spool full: %+v", r)
	}
	if !strings.Contains(p.stderr.String(), "spool full") {
		t.Errorf("the log does not say the spool is full:\n%s", p.stderr.String())
	}
	emu.RefuseConnections(false)
	waitSpoolDrained(t, admin, 60*time.Second, p.stderr)
	if status, _ := spoolPost(t, listen, spoolCallEvent("c1-0", 1)); status != 200 {
		t.Fatalf("after draining: status %d", status)
	}
	accepted[1] = []string{"c1-0"}
	checkSpooledCalls(t, emu, accepted)
	p.stop(t)
}

func TestSpoolUsage(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, tt := range []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"embedded queue", nil, []string{"--queue", "sqlite:" + filepath.Join(dir, "q.db"), "--spool", "sqlite:" + filepath.Join(dir, "s.db")}, "already local and durable"},
		{"not sqlite", map[string]string{envServiceBusConnStr: "Endpoint=sb://localhost:1;SharedAccessKeyName=k;SharedAccessKey=v;UseDevelopmentEmulator=true"},
			[]string{"--queue", "servicebus:///q", "--spool", "redis://x"}, "sqlite:<path>"},
		{"bad spool option", map[string]string{envServiceBusConnStr: "Endpoint=sb://localhost:1;SharedAccessKeyName=k;SharedAccessKey=v;UseDevelopmentEmulator=true"},
			[]string{"--queue", "servicebus:///q", "--spool", "sqlite:" + filepath.Join(dir, "s.db") + "?lock=forever"}, "--spool"},
		{"bad budget", map[string]string{envServiceBusConnStr: "Endpoint=sb://localhost:1;SharedAccessKeyName=k;SharedAccessKey=v;UseDevelopmentEmulator=true"},
			[]string{"--queue", "servicebus:///q", "--spool", "sqlite:" + filepath.Join(dir, "s2.db"), "--spool-after", "1h"}, "--spool-after"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			env := map[string]string{envACSAPIKeys: spoolTestKey}
			for k, v := range tt.env {
				env[k] = v
			}
			args := append([]string{"ingress", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"}, tt.args...)
			_, _, err := runCLI(t, env, args...)
			var ue usageError
			if err == nil || !strings.Contains(err.Error(), tt.want) || !errors.As(err, &ue) {
				t.Fatalf("err = %v, want a usage error mentioning %q", err, tt.want)
			}
		})
	}
}

// TestNoSpoolWarns: an ingress on Service Bus without a spool says at start
// that Service Bus failures will be answered 503.
func TestNoSpoolWarns(t *testing.T) {
	t.Parallel()
	emu := spoolEmulator(t)
	admin := freeport.Addr(t)
	logs := &testlog.Buffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	environ := map[string]string{envServiceBusConnStr: emu.ConnectionString(), envACSAPIKeys: spoolTestKey}
	go func() {
		done <- run(ctx, []string{"ingress", "--queue", "servicebus:///hookbridge-events", "--listen", "127.0.0.1:0", "--admin-listen", admin},
			func(k string) string { return environ[k] }, strings.NewReader(""), io.Discard, logs)
	}()
	waitHTTP(t, "http://"+admin+"/readyz")
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "no --spool") || !strings.Contains(logs.String(), "503") {
		t.Errorf("no warning about the missing spool:\n%s", logs.String())
	}
}
