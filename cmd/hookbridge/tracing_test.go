package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hookbridge/hookbridge/internal/freeport"
	"github.com/hookbridge/hookbridge/internal/sbemu"
	"github.com/hookbridge/hookbridge/internal/sbemu/sbemutest"
	"github.com/hookbridge/hookbridge/internal/testlog"
	"github.com/hookbridge/hookbridge/internal/testwait"
	"github.com/hookbridge/hookbridge/internal/tracing/tracingtest"
)

// traceBackend is a delivery backend that records, per request, the
// traceparent header and the event's traceparent extension. Requests for
// event ids in hold wait until the test ends (a delivery a worker is
// killed in).
type traceBackend struct {
	*httptest.Server
	mu         sync.Mutex
	deliveries []traceDelivery
	hold       map[string]bool
	release    chan struct{}
}

type traceDelivery struct {
	id, header, body string
}

func newTraceBackend(t *testing.T, hold ...string) *traceBackend {
	t.Helper()
	b := &traceBackend{hold: map[string]bool{}, release: make(chan struct{})}
	for _, id := range hold {
		b.hold[id] = true
	}
	b.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var e struct {
			ID          string `json:"id"`
			TraceParent string `json:"traceparent"`
		}
		json.NewDecoder(r.Body).Decode(&e)
		b.mu.Lock()
		b.deliveries = append(b.deliveries, traceDelivery{e.ID, r.Header.Get("traceparent"), e.TraceParent})
		held := b.hold[e.ID]
		delete(b.hold, e.ID) // the next delivery goes through
		b.mu.Unlock()
		if held {
			select {
			case <-b.release:
			case <-r.Context().Done():
			}
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	t.Cleanup(func() { close(b.release); b.Close() })
	return b
}

func (b *traceBackend) got() []traceDelivery {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]traceDelivery(nil), b.deliveries...)
}

// traceID is the trace id of a traceparent.
func traceID(traceparent string) string {
	parts := strings.Split(traceparent, "-")
	if len(parts) != 4 {
		return ""
	}
	return parts[1]
}

// spanID is the span id of a traceparent.
func spanID(traceparent string) string {
	parts := strings.Split(traceparent, "-")
	if len(parts) != 4 {
		return ""
	}
	return parts[2]
}

// inTrace returns the spans of one trace.
func inTrace(spans []tracingtest.Span, trace string) []tracingtest.Span {
	var out []tracingtest.Span
	for _, s := range spans {
		if s.TraceID == trace {
			out = append(out, s)
		}
	}
	return out
}

func mustSpan(t *testing.T, spans []tracingtest.Span, name string) tracingtest.Span {
	t.Helper()
	s, ok := tracingtest.Find(spans, name, "", "")
	if !ok {
		var b strings.Builder
		for _, s := range spans {
			fmt.Fprintf(&b, "\n  %s", s)
		}
		t.Fatalf("no span %q in the trace:%s", name, b.String())
	}
	return s
}

// checkTrace checks the spans of one event's trace, from the ingress to
// the delivery that reached the backend (post is the traceparent the
// backend received): each span the child of the one before it, across the
// queue.
func checkTrace(t *testing.T, spans []tracingtest.Span, queueName, system, post string, deliveryCount int) {
	t.Helper()
	server := mustSpan(t, spans, "POST /acs/callbacks")
	verify := mustSpan(t, spans, "verify")
	send := mustSpan(t, spans, "send "+queueName)
	commit := mustSpan(t, spans, "commit "+queueName)
	var process tracingtest.Span
	for _, s := range tracingtest.ByName(spans, "process "+queueName) {
		if s.Attributes["hookbridge.delivery_count"] == fmt.Sprint(deliveryCount) {
			process = s
		}
	}
	if process.Name == "" {
		t.Fatalf("no process span of delivery %d: %v", deliveryCount, tracingtest.ByName(spans, "process "+queueName))
	}
	var postSpan tracingtest.Span
	for _, s := range tracingtest.ByName(spans, "POST") {
		if s.SpanID == spanID(post) {
			postSpan = s
		}
	}
	if postSpan.Name == "" {
		t.Fatalf("the backend's traceparent %s names no exported POST span", post)
	}
	settle := mustSpan(t, spans, "settle "+queueName)
	for _, c := range []struct {
		child, parent tracingtest.Span
	}{{verify, server}, {send, server}, {commit, send}, {process, send}, {postSpan, process}, {settle, process}} {
		if c.child.ParentID != c.parent.SpanID {
			t.Errorf("%s: parent %s, want %s (%s)", c.child.Name, c.child.ParentID, c.parent.SpanID, c.parent.Name)
		}
	}
	for _, s := range []tracingtest.Span{server, verify, send, commit} {
		if s.Service != serviceIngress {
			t.Errorf("%s exported by service %q, want %s", s.Name, s.Service, serviceIngress)
		}
	}
	for _, s := range []tracingtest.Span{process, postSpan, settle} {
		if s.Service != serviceWorker {
			t.Errorf("%s exported by service %q, want %s", s.Name, s.Service, serviceWorker)
		}
	}
	for _, s := range []tracingtest.Span{send, commit, process, settle} {
		if s.Attributes["messaging.system"] != system || s.Attributes["messaging.destination.name"] == "" {
			t.Errorf("%s: messaging attributes %v", s.Name, s.Attributes)
		}
	}
	if server.Attributes["http.response.status_code"] != "200" || postSpan.Attributes["http.response.status_code"] != "200" ||
		process.Attributes["hookbridge.outcome"] != "completed" || server.Resource["service.version"] == "" {
		t.Errorf("outcomes: request %v, delivery %v, post %v", server.Attributes, process.Attributes, postSpan.Attributes)
	}
	for _, s := range spans {
		for k, v := range s.Attributes {
			if strings.Contains(v, testKey) {
				t.Errorf("span %s attribute %s holds the API key", s.Name, k)
			}
		}
	}
}

// testKey is the API key the traced ingresses accept.
const testKey = "trace-0123456789abcdef-key"

// TestTracingThroughProcesses runs `hookbridge ingress` and `hookbridge
// worker` as processes on the embedded queue, with nothing but the
// standard OpenTelemetry environment pointing at an in-process collector.
// A callback that arrives with a traceparent is followed into the queue
// and out: the first worker is killed while it delivers, a second one
// delivers the event once the lock expires, and its spans, in another
// process, continue the same trace, because the context travels in the
// message. The backend receives the trace in the traceparent header and
// in the event.
func TestTracingThroughProcesses(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("process test skipped in -short mode")
	}
	rcv := tracingtest.NewReceiver(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "traced.db")
	queue := "sqlite:" + path + "?lock=1s"
	backend := newTraceBackend(t, "traced-1")
	env := append(os.Environ(), "OTEL_EXPORTER_OTLP_ENDPOINT="+rcv.URL, "OTEL_BSP_SCHEDULE_DELAY=50", envACSAPIKeys+"="+testKey)

	listen, admin := freeport.Addr(t), freeport.Addr(t)
	ing := startWithEnv(t, env, "ingress", "--queue", queue, "--listen", listen, "--admin-listen", admin)
	waitHTTP(t, "http://"+admin+"/readyz")
	workerArgs := []string{"worker", "--queue", queue, "--deliver", backend.URL, "--admin-listen", "127.0.0.1:0", "--min-backoff", "100ms"}
	first := startWithEnv(t, env, workerArgs...)

	const incoming = "00-5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a-0102030405060708-01"
	body := `[{"specversion":"1.0","id":"traced-1","source":"calling/callConnections/c9","type":"Microsoft.Communication.CallConnected","data":{"correlationId":"call-9"}}]`
	req, _ := http.NewRequest(http.MethodPost, "http://"+listen+"/acs/callbacks?key="+testKey, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("traceparent", incoming)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d\n%s", resp.StatusCode, ing.stderr.String())
	}

	testwait.Until(t, 20*time.Second, "the first worker to take the delivery", func() bool { return len(backend.got()) == 1 })
	first.cmd.Process.Kill()
	first.cmd.Wait()
	second := startWithEnv(t, env, workerArgs...)
	testwait.Until(t, 20*time.Second, "the second worker to deliver the event", func() bool { return len(backend.got()) == 2 })
	got := backend.got()
	for i, d := range got {
		if traceID(d.header) != traceID(incoming) || traceID(d.body) != traceID(incoming) {
			t.Errorf("delivery %d: traceparent header %q, event traceparent %q; want both in trace %s", i+1, d.header, d.body, traceID(incoming))
		}
	}
	if got[0].body != got[1].body {
		t.Errorf("the event's traceparent changed between deliveries: %q, %q", got[0].body, got[1].body)
	}
	second.stop(t)
	ing.stop(t)

	spans := rcv.WaitFor(t, 10*time.Second, "the trace from the ingress to the second delivery", func(s []tracingtest.Span) bool {
		tr := inTrace(s, traceID(incoming))
		_, ok := tracingtest.Find(tr, "process "+path, "hookbridge.delivery_count", "2")
		_, commit := tracingtest.Find(tr, "commit "+path, "", "")
		return ok && commit
	})
	tr := inTrace(spans, traceID(incoming))
	checkTrace(t, tr, path, "sqlite", got[1].header, 2)
	server := mustSpan(t, tr, "POST /acs/callbacks")
	if server.ParentID != spanID(incoming) {
		t.Errorf("the request's span has parent %s, want the sender's %s", server.ParentID, spanID(incoming))
	}
	if send := mustSpan(t, tr, "send "+path); got[1].body != "00-"+send.TraceID+"-"+send.SpanID+"-01" {
		t.Errorf("the event carries %q, want the send span's context", got[1].body)
	}
	for _, logs := range []string{ing.stderr.String(), second.stderr.String()} {
		if !strings.Contains(logs, "tracing on") {
			t.Errorf("the start of tracing is not logged:\n%s", logs)
		}
	}
}

// TestTracingOverServiceBus runs the ingress and a worker in-process on a
// Service Bus queue (the emulator), exporting over OTLP/gRPC: the trace
// context crosses Service Bus in the message's application properties,
// and a request without traceparent starts the trace.
func TestTracingOverServiceBus(t *testing.T) {
	t.Parallel()
	emu := sbemutest.NewServer(t, sbemu.QueueConfig{Name: "traced-events", RequiresSession: true, RequiresDuplicateDetection: true,
		LockDuration: 10 * time.Second})
	rcv := tracingtest.NewReceiver(t)
	backend := newTraceBackend(t)
	environ := map[string]string{
		"OTEL_EXPORTER_OTLP_ENDPOINT": rcv.GRPCURL,
		"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
		"OTEL_BSP_SCHEDULE_DELAY":     "50",
		envServiceBusConnStr:          emu.ConnectionString(),
		envACSAPIKeys:                 testKey,
	}
	getenv := func(k string) string { return environ[k] }
	listen, admin := freeport.Addr(t), freeport.Addr(t)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var ingLog, wrkLog testlog.Buffer
	for _, args := range [][]string{
		{"ingress", "--queue", "servicebus:///traced-events", "--listen", listen, "--admin-listen", admin, "--drain-delay", "0"},
		{"worker", "--queue", "servicebus:///traced-events", "--deliver", backend.URL, "--admin-listen", "127.0.0.1:0"},
	} {
		logs := &ingLog
		if args[0] == "worker" {
			logs = &wrkLog
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := run(ctx, args, getenv, strings.NewReader(""), io.Discard, logs); err != nil {
				t.Errorf("%s: %v\n%s", args[0], err, logs.String())
			}
		}()
	}
	stop := func() { cancel(); wg.Wait() }
	t.Cleanup(stop)
	waitHTTP(t, "http://"+admin+"/readyz")

	body := `[{"specversion":"1.0","id":"sb-traced-1","source":"calling/callConnections/c3","type":"Microsoft.Communication.PlayCompleted","data":{"correlationId":"call-3"}}]`
	resp, err := http.Post("http://"+listen+"/acs/callbacks?key="+testKey, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d\n%s", resp.StatusCode, ingLog.String())
	}
	testwait.Until(t, 20*time.Second, "the delivery", func() bool { return len(backend.got()) == 1 })
	stop() // flushes what is buffered
	d := backend.got()[0]
	spans := inTrace(rcv.Spans(), traceID(d.header))
	checkTrace(t, spans, "traced-events", "servicebus", d.header, 1)
	server := mustSpan(t, spans, "POST /acs/callbacks")
	if server.ParentID != "" {
		t.Errorf("a request without traceparent continues %s", server.ParentID)
	}
	if traceID(d.body) != traceID(d.header) {
		t.Errorf("event traceparent %q, header %q: two traces", d.body, d.header)
	}
	for _, s := range []string{"send traced-events", "process traced-events"} {
		if a := mustSpan(t, spans, s).Attributes; a["server.address"] != "127.0.0.1" || a["messaging.destination.name"] != "traced-events" {
			t.Errorf("%s: attributes %v", s, a)
		}
	}
	if reqs := rcv.Requests(); len(reqs) == 0 || reqs[0] != "grpc" {
		t.Errorf("exports %v, want gRPC", reqs)
	}
}

// TestTracingUsage: a tracing setting hookbridge cannot honour is refused
// at start, naming it; tracing off by the environment starts nothing.
func TestTracingUsage(t *testing.T) {
	t.Parallel()
	q := "sqlite:" + filepath.Join(t.TempDir(), "q.db")
	for _, tt := range []struct {
		env  map[string]string
		args []string
		want string
	}{
		{map[string]string{"OTEL_EXPORTER_OTLP_PROTOCOL": "udp", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://localhost:4318"}, nil, "OTEL_EXPORTER_OTLP_PROTOCOL"},
		{map[string]string{"OTEL_TRACES_SAMPLER": "sometimes", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://localhost:4318"}, nil, "OTEL_TRACES_SAMPLER"},
		{nil, []string{"--trace-endpoint", "localhost:4318"}, "--trace-endpoint"},
		{map[string]string{"HOOKBRIDGE_TRACE_ENDPOINT": "collector"}, nil, "--trace-endpoint"},
	} {
		args := append([]string{"worker", "--queue", q, "--admin-listen", "127.0.0.1:0"}, tt.args...)
		_, _, err := runCLI(t, tt.env, args...)
		var ue usageError
		if err == nil || !strings.Contains(err.Error(), tt.want) || !errors.As(err, &ue) {
			t.Errorf("%v %v: err = %v, want a usage error naming %s", tt.env, tt.args, err, tt.want)
		}
	}
}

// TestDevDemoTraced: the whole demo call, traced to a collector given by
// the flag alone, still exits 0, and every event's delivery continues its
// request's trace.
func TestDevDemoTraced(t *testing.T) {
	t.Parallel()
	rcv := tracingtest.NewReceiver(t)
	dir := t.TempDir()
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	err := run(ctx, []string{"dev", "--demo", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
		"--queue", "sqlite:" + filepath.Join(dir, "demo.db"), "--trace-endpoint", rcv.URL},
		func(string) string { return "" }, strings.NewReader(""), &stdout, &stderr)
	if err != nil {
		t.Fatalf("dev --demo: %v\n%s", err, stderr.String())
	}
	spans := rcv.Spans()
	process := tracingtest.ByName(spans, "process "+filepath.Join(dir, "demo.db"))
	if len(process) != 5 {
		t.Fatalf("%d deliveries traced, want 5", len(process))
	}
	for _, p := range process {
		if p.Service != serviceDev {
			t.Errorf("service %q, want %s", p.Service, serviceDev)
		}
		tr := inTrace(spans, p.TraceID)
		if _, ok := tracingtest.Find(tr, "send "+filepath.Join(dir, "demo.db"), "", ""); !ok {
			t.Errorf("the delivery of %s is in no request's trace", p.Attributes["cloudevents.event_type"])
		}
	}
	if _, ok := tracingtest.Find(spans, "POST /eventgrid", "", ""); !ok {
		t.Error("the Event Grid delivery is not traced")
	}
}
