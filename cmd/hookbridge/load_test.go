package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/labstack/echo/v4"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/hookbridge/hookbridge/ingress"
	"github.com/hookbridge/hookbridge/internal/devissuer"
	"github.com/hookbridge/hookbridge/internal/devissuer/devissuertest"
	"github.com/hookbridge/hookbridge/internal/freeport"
)

// TestLoadLoopback measures the ingress and the whole host over loopback,
// every server its own process, the load generator in this one, all on the
// same cores:
//
//  1. A verify-only server (Echo and the Call Automation verifier, nothing
//     else) and `hookbridge ingress` (durable commit to the embedded queue),
//     each at its peak (64 keep-alive senders) and at half of it: throughput,
//     CPU per request of the server process, and request latency; and, at
//     half load, where the ingress's time went (as in 3).
//  2. The host: `hookbridge ingress`, `hookbridge worker` and a stub HTTP
//     backend process together. Its capacity is the highest offered rate the
//     worker keeps up with (the backlog does not grow).
//  3. End to end, from request sent to event at the backend, at half of that
//     capacity and at 50, 200 and 500 requests a second (the rates of a
//     contact centre), with the CPU the ingress and the worker spent on each
//     event (and the stub backend, apart), and where the time went, from
//     the processes' own histograms: the ingress's enqueue, its commits and
//     the log's fsyncs they wait for, both processes' checkpoints, and the
//     worker's deliveries (the POST and the settlement).
//
// Before all of it, the disk alone: how long an fdatasync of a small write
// takes with nothing else running, the floor under every latency above.
//
// It takes a few minutes, so it runs only when asked:
//
//	HOOKBRIDGE_LOAD_TEST=1 go test ./cmd/hookbridge -run TestLoadLoopback -v
//
// HOOKBRIDGE_LOAD_DURATION sets each measurement's length (default 10s);
// HOOKBRIDGE_LOAD_INGRESS_FLAGS and HOOKBRIDGE_LOAD_WORKER_FLAGS add flags
// to the ingress and worker processes (for instance "--batch-linger 0"), to
// compare settings in the same conditions; HOOKBRIDGE_LOAD_BINARY runs
// another build of hookbridge as the ingress and the worker (an earlier
// commit's, say), to compare builds the same way.
func TestLoadLoopback(t *testing.T) {
	if os.Getenv("HOOKBRIDGE_LOAD_TEST") == "" {
		t.Skip("load test skipped; set HOOKBRIDGE_LOAD_TEST=1 to run it")
	}
	duration := 10 * time.Second
	if v, err := time.ParseDuration(os.Getenv("HOOKBRIDGE_LOAD_DURATION")); err == nil {
		duration = v
	}
	lt := newLoadTarget(t)

	// 0. The disk alone, for scale: the latency targets below are bounded
	// by how fast it flushes.
	disk := diskFlushes(t, 400, duration/4)
	t.Logf("the disk alone, no other load: a 12 KiB write and fdatasync 400 times a second: p50 %v p99 %v max %v",
		disk.p50, disk.p99, disk.max)

	// 1. Verify-only against durable, each at peak and at half of it.
	verify := lt.verifyOnly(t)
	vPeak := lt.run(t, verify, 0, duration)
	vHalf := lt.run(t, verify, vPeak.rate/2, duration)
	verify.stop(t)

	ing := lt.ingress(t, "")
	dPeak := lt.run(t, ing, 0, duration)
	before, berr := scrapeStages(ing.admin)
	dHalf := lt.run(t, ing, dPeak.rate/2, duration)
	after, aerr := scrapeStages(ing.admin)
	rss := vmHWM(ing.proc.cmd.Process.Pid)
	ing.stop(t)

	t.Logf("verify-only: peak %.0f req/s, %.1f CPU-µs/req; at half: p50 %v p99 %v", vPeak.rate, vPeak.cpuPerReq, vHalf.p50, vHalf.p99)
	t.Logf("durable:     peak %.0f req/s, %.1f CPU-µs/req; at half: p50 %v p99 %v", dPeak.rate, dPeak.cpuPerReq, dHalf.p50, dHalf.p99)
	t.Logf("ratios: throughput %.2f, CPU per request %.2f (targets ≥ 0.7); p99 at half load +%v (target ≤ +2ms)",
		dPeak.rate/vPeak.rate, vPeak.cpuPerReq/dPeak.cpuPerReq, dHalf.p99-vHalf.p99)
	if err := errors.Join(berr, aerr); err != nil {
		t.Logf("  at half load, where it went: not known: %v", err)
	} else {
		t.Logf("  at half load, where it went: %s", after.since(before))
	}
	t.Logf("ingress peak resident memory %.1f MiB (target ≤ 50 MiB)", float64(rss)/1024)

	// 2. The host: ingress, worker and backend.
	backend := lt.backend(t)
	queue := "sqlite:" + filepath.Join(t.TempDir(), "host.db")
	host := lt.ingress(t, queue)
	workerAdmin := freeport.Addr(t)
	worker := startHookbridge(t, append([]string{"worker", "--queue", queue, "--deliver", backend.url, "--admin-listen", workerAdmin, "--log-level", "warn"},
		strings.Fields(os.Getenv("HOOKBRIDGE_LOAD_WORKER_FLAGS"))...)...)
	capacity := 0.0
	lo, hi := 0.1*dPeak.rate, dPeak.rate
	for range 5 { // binary search on the offered rate
		rate := (lo + hi) / 2
		before := backend.delivered()
		r := lt.run(t, host, rate, duration/2)
		settle := time.Now().Add(time.Second)
		for time.Now().Before(settle) && backend.delivered()-before < int64(r.accepted) {
			time.Sleep(10 * time.Millisecond)
		}
		kept := float64(backend.delivered()-before) >= 0.99*float64(r.accepted) && r.failed == 0 && r.rate >= 0.95*rate
		t.Logf("host at %.0f req/s offered: accepted %.0f/s, delivered %d of %d within a second of the end: kept up %v",
			rate, r.rate, backend.delivered()-before, r.accepted, kept)
		if kept {
			capacity, lo = rate, rate
		} else {
			hi = rate
		}
		backend.waitIdle(10 * time.Second)
	}
	t.Logf("host capacity %.0f req/s = %.2f × the ingress alone (target ≥ 0.5)", capacity, capacity/dPeak.rate)
	if capacity == 0 {
		// A measurement, not a failure: a machine this loaded has no
		// latency worth reporting either.
		t.Logf("the host kept up with none of the rates offered; no end-to-end runs")
	}
	// 3. End to end: at half of the host's capacity, and at the rates a
	// contact centre sends, with what hookbridge (ingress and worker) and
	// the stub backend spend on each event.
	for _, rate := range []float64{capacity / 2, 50, 200, 500} {
		if rate > capacity/2 || rate == 0 { // 0 would be an unpaced flood
			continue
		}
		before, berr := scrapeStages(host.admin, workerAdmin)
		h := lt.runHost(t, host, worker, backend, rate, duration)
		t.Logf("end to end at %.0f req/s: p50 %v p99 %v over %d events (target p99 ≤ 5ms at half capacity); hookbridge spent %.0f CPU-µs an event (the ingress %.0f), the stub backend %.0f",
			rate, pct(h.e2e, 0.5), pct(h.e2e, 0.99), len(h.e2e), h.cpuPerEvent, h.ingress.cpuPerReq, h.backendPerEvent)
		// Where it went is a reading of the processes' metrics: one that
		// fails is reported, and the measurements go on.
		after, aerr := scrapeStages(host.admin, workerAdmin)
		if err := errors.Join(berr, aerr); err != nil {
			t.Logf("  where it went: not known: %v", err)
		} else {
			t.Logf("  where it went: %s", after.since(before))
		}
	}
	t.Logf("host peak resident memory: ingress %.1f MiB, worker %.1f MiB",
		float64(vmHWM(host.proc.cmd.Process.Pid))/1024, float64(vmHWM(worker.cmd.Process.Pid))/1024)
	worker.stop(t)
	host.stop(t)
}

// hostResult is one run against the whole host.
type hostResult struct {
	ingress         result
	e2e             []time.Duration
	cpuPerEvent     float64 // CPU µs of the ingress and the worker together
	backendPerEvent float64 // CPU µs of the stub backend
}

// runHost posts to the host's ingress at rate for d and waits for every
// accepted event to reach the backend.
func (lt *loadTarget) runHost(t *testing.T, host *server, worker *process, backend *loadBackend, rate float64, d time.Duration) hostResult {
	t.Helper()
	cpu := func() (hookbridge, backendCPU time.Duration) {
		return procCPU(host.proc.cmd.Process.Pid) + procCPU(worker.cmd.Process.Pid), procCPU(backend.proc.cmd.Process.Pid)
	}
	backend.reset()
	hb0, be0 := cpu()
	r := lt.run(t, host, rate, d)
	backend.waitFor(int64(r.accepted), 30*time.Second)
	hb1, be1 := cpu()
	if r.failed > 0 {
		t.Errorf("%d requests failed at %.0f req/s", r.failed, rate)
	}
	n, e2e := backend.stats()
	if n < int64(r.accepted) {
		t.Errorf("at %.0f req/s: %d accepted, %d delivered", rate, r.accepted, n)
	}
	h := hostResult{ingress: r, e2e: e2e}
	if r.accepted > 0 {
		h.cpuPerEvent = float64((hb1 - hb0).Microseconds()) / float64(r.accepted)
		h.backendPerEvent = float64((be1 - be0).Microseconds()) / float64(r.accepted)
	}
	return h
}

// loadTarget holds what every load run shares: the token issuer and a pool
// of pre-signed tokens (signing is far dearer than verifying).
type loadTarget struct {
	iss    *devissuer.Issuer
	toks   []string
	client *http.Client
}

func newLoadTarget(t *testing.T) *loadTarget {
	iss := devissuertest.NewServer(t, "acs-resource")
	lt := &loadTarget{iss: iss, toks: make([]string, 4096),
		client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}}}
	var wg sync.WaitGroup
	for w := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < len(lt.toks); i += 2 {
				lt.toks[i], _ = iss.ACSToken("")
			}
		}()
	}
	wg.Wait()
	return lt
}

// server is a process under load.
type server struct {
	proc  *process
	url   string
	admin string // the admin listener's address, "" for none
}

func (s *server) stop(t *testing.T) { s.proc.stop(t) }

// ingress starts `hookbridge ingress` on queue (a fresh file when empty).
func (lt *loadTarget) ingress(t *testing.T, queue string) *server {
	if queue == "" {
		queue = "sqlite:" + filepath.Join(t.TempDir(), "load.db")
	}
	listen, admin := freeport.Addr(t), freeport.Addr(t)
	args := []string{"ingress", "--queue", queue, "--listen", listen, "--admin-listen", admin,
		"--acs-audience", "acs-resource", "--acs-oidc-url", lt.iss.DiscoveryURL(), "--log-level", "warn",
		// The pool of pre-signed tokens is reused with new bodies, which the
		// replay defence refuses.
		"--replay-cache-size", "-1"}
	p := startHookbridge(t, append(args, strings.Fields(os.Getenv("HOOKBRIDGE_LOAD_INGRESS_FLAGS"))...)...)
	waitHTTP(t, "http://"+admin+"/readyz")
	return &server{proc: p, url: "http://" + listen + ingress.PathACSCallbacks, admin: admin}
}

// startHookbridge starts the hookbridge binary under test with args, or
// the build HOOKBRIDGE_LOAD_BINARY names.
func startHookbridge(t *testing.T, args ...string) *process {
	t.Helper()
	if bin := os.Getenv("HOOKBRIDGE_LOAD_BINARY"); bin != "" {
		return startProcess(t, exec.Command(bin, args...))
	}
	return start(t, args...)
}

// verifyOnly starts this test binary as the verify-only server (see
// loadRole).
func (lt *loadTarget) verifyOnly(t *testing.T) *server {
	addr := freeport.Addr(t)
	p := startRole(t, "verify-only", addr, lt.iss.DiscoveryURL())
	waitHTTP(t, "http://"+addr+"/ready")
	return &server{proc: p, url: "http://" + addr + ingress.PathACSCallbacks}
}

// result is one load run's outcome.
type result struct {
	accepted, failed int
	rate             float64 // accepted per second
	cpuPerReq        float64 // the server process's CPU µs per accepted request
	p50, p99         time.Duration
}

// run posts signed one-event callbacks to s for d: as fast as 64 senders
// can (rate 0), or at rate requests per second, paced, latency measured from
// when each request was due (so a stall is not hidden).
func (lt *loadTarget) run(t *testing.T, s *server, rate float64, d time.Duration) result {
	t.Helper()
	run := time.Now().UnixNano() // event ids unique across runs: duplicates would be dropped
	var seq atomic.Int64
	var accepted, failed atomic.Int64
	lats := make([][]time.Duration, 64)
	due := make(chan time.Time, 4096)
	stop := time.Now().Add(d)
	if rate > 0 {
		go func() {
			defer close(due)
			interval := time.Duration(float64(time.Second) / rate)
			next := time.Now()
			for next.Before(stop) {
				if w := time.Until(next); w > 0 {
					time.Sleep(w)
				}
				for ; !next.After(time.Now()) && next.Before(stop); next = next.Add(interval) {
					due <- next
				}
			}
		}()
	}
	cpu0 := procCPU(s.proc.cmd.Process.Pid)
	begin := time.Now()
	var wg sync.WaitGroup
	for c := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				var at time.Time
				if rate > 0 {
					var ok bool
					if at, ok = <-due; !ok {
						return
					}
				} else if at = time.Now(); !at.Before(stop) {
					return
				}
				i := seq.Add(1)
				// operationContext carries when the request was due, so the
				// backend can tell the whole way from request to delivery.
				body := fmt.Sprintf(`[{"specversion":"1.0","id":"load-%d-%d","source":"calling/callConnections/c%d","type":"Microsoft.Communication.PlayCompleted","time":"2024-05-14T17:30:00Z","datacontenttype":"application/json","data":{"callConnectionId":"c%d","serverCallId":"s%d","correlationId":"call-%d","operationContext":"%d","resultInformation":{"code":200,"subCode":0,"message":"Action completed successfully."}}}]`,
					run, i, i%500, i%500, i%500, i%500, at.UnixNano())
				req, _ := http.NewRequest(http.MethodPost, s.url, strings.NewReader(body))
				req.Header.Set("Authorization", "Bearer "+lt.toks[i%int64(len(lt.toks))])
				req.Header.Set("Content-Type", "application/json")
				resp, err := lt.client.Do(req)
				if err != nil {
					failed.Add(1)
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					failed.Add(1)
					continue
				}
				accepted.Add(1)
				lats[c] = append(lats[c], time.Since(at))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(begin)
	cpu := procCPU(s.proc.cmd.Process.Pid) - cpu0
	var all []time.Duration
	for _, l := range lats {
		all = append(all, l...)
	}
	r := result{accepted: int(accepted.Load()), failed: int(failed.Load()), p50: pct(all, 0.5), p99: pct(all, 0.99)}
	r.rate = float64(r.accepted) / elapsed.Seconds()
	if r.accepted > 0 {
		r.cpuPerReq = float64(cpu.Microseconds()) / float64(r.accepted)
	}
	if r.failed > 0 {
		t.Logf("%s: %d requests failed", s.url, r.failed)
	}
	return r
}

// flushes is how long a run of flushes took.
type flushes struct{ p50, p99, max time.Duration }

// diskFlushes writes 12 KiB (a commit of a few events) and flushes it with
// fdatasync, rate times a second for d, in a file in the test's temporary
// directory, where the queues live. The writes go round the first 4 MiB,
// as the write-ahead log is overwritten in place between restarts.
func diskFlushes(t *testing.T, rate int, d time.Duration) flushes {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "flushes"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 12<<10)
	var lats []time.Duration
	var off int64
	interval := time.Second / time.Duration(rate)
	for next, end := time.Now(), time.Now().Add(d); next.Before(end); next = next.Add(interval) {
		time.Sleep(time.Until(next))
		if _, err := f.WriteAt(buf, off); err != nil {
			t.Fatal(err)
		}
		if off += int64(len(buf)); off >= 4<<20 {
			off = 0
		}
		start := time.Now()
		if err := datasync(f); err != nil {
			t.Fatal(err)
		}
		lats = append(lats, time.Since(start))
	}
	return flushes{p50: pct(lats, 0.5), p99: pct(lats, 0.99), max: slices.Max(lats)}
}

func pct(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	return d[min(len(d)-1, int(p*float64(len(d))))]
}

// procCPU reads a process's user and system CPU time from /proc.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name (field 2) may hold spaces; fields count from after it.
	fields := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(fields) < 13 {
		return 0
	}
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	return time.Duration(utime+stime) * time.Second / 100 // USER_HZ
}

// stages is what the host's processes report of their own work, from their
// /metrics: the ingress's enqueue (its wait for a group commit), its commits
// and the fsyncs they wait for, the queue's checkpoints, and the worker's
// deliveries (the POST and the settlement).
type stages map[string]*dto.MetricFamily

func scrapeStages(admins ...string) (stages, error) {
	out := stages{}
	for _, addr := range admins {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			return nil, err
		}
		parser := expfmt.NewTextParser(model.UTF8Validation)
		fams, err := parser.TextToMetricFamilies(resp.Body)
		resp.Body.Close()
		if err == nil && resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("status %s", resp.Status)
		}
		if err != nil {
			return nil, fmt.Errorf("scrape %s: %w", addr, err)
		}
		for name, f := range fams {
			if prev, ok := out[name]; ok { // both processes: all series count
				f.Metric = append(f.Metric, prev.Metric...)
			}
			out[name] = f
		}
	}
	return out, nil
}

// since summarizes the histograms' growth from before to s: the ingress's
// enqueue, its commits, their wait for the write lock and their fsyncs,
// both processes' checkpoints, and, with a worker, the deliveries and the
// worker's wait for the write lock.
func (s stages) since(before stages) string {
	enq := histogramGrowth(before, s, "hookbridge_enqueue_duration_seconds")
	commit := histogramGrowth(before, s, "hookbridge_queue_commit_duration_seconds")
	size := histogramGrowth(before, s, "hookbridge_queue_commit_messages")
	fsync := histogramGrowth(before, s, "hookbridge_queue_fsync_duration_seconds")
	sendWait := histogramGrowth(before, s, "hookbridge_queue_lock_wait_seconds", "writer", "send")
	receiveWait := histogramGrowth(before, s, "hookbridge_queue_lock_wait_seconds", "writer", "receive")
	passive := histogramGrowth(before, s, "hookbridge_queue_checkpoint_duration_seconds", "mode", "passive")
	restart := histogramGrowth(before, s, "hookbridge_queue_checkpoint_duration_seconds", "mode", "restart")
	out := fmt.Sprintf("enqueue mean %s (%s ≤ 5ms), of which commits mean %s at %s events a commit, their wait for the write lock mean %s; the log's fsyncs mean %s (%s ≤ 1ms, %s ≤ 2ms, %s over 10ms); checkpoints %.0f passive (mean %s), %.0f restarting (mean %s)",
		enq.mean(1e3, "%.2fms"), enq.under(0.005), commit.mean(1e3, "%.2fms"), size.mean(1, "%.1f"), sendWait.mean(1e3, "%.2fms"),
		fsync.mean(1e3, "%.2fms"), fsync.under(0.001), fsync.under(0.002), fsync.over(0.01),
		passive.count, passive.mean(1e3, "%.1fms"), restart.count, restart.mean(1e3, "%.1fms"))
	if post := histogramGrowth(before, s, "hookbridge_worker_delivery_duration_seconds"); post.count > 0 {
		out += fmt.Sprintf("; delivery (receipt to settlement: the POST and the complete) mean %s (%s ≤ 2.5ms); the worker's claims and settlements waited for the write lock mean %s",
			post.mean(1e3, "%.2fms"), post.under(0.0025), receiveWait.mean(1e3, "%.2fms"))
	}
	return out
}

// growth is what a histogram (all its series together) observed between
// two scrapes.
type growth struct {
	count, sum float64
	buckets    map[float64]float64 // upper bound → observations at most that
}

// histogramGrowth is what the histograms named name observed between before
// and after; with labels (name, value, name, value, ...), only the series
// carrying all of them.
func histogramGrowth(before, after stages, name string, labels ...string) growth {
	if len(labels)%2 != 0 {
		panic(fmt.Sprintf("histogramGrowth %s: labels %q are not name and value pairs", name, labels))
	}
	g := growth{buckets: map[float64]float64{}}
	add := func(f *dto.MetricFamily, sign float64) {
		if f == nil {
			return
		}
	series:
		for _, m := range f.GetMetric() {
			for i := 0; i < len(labels); i += 2 {
				if !hasLabel(m, labels[i], labels[i+1]) {
					continue series
				}
			}
			h := m.GetHistogram()
			g.count += sign * float64(h.GetSampleCount())
			g.sum += sign * h.GetSampleSum()
			for _, b := range h.GetBucket() {
				g.buckets[b.GetUpperBound()] += sign * float64(b.GetCumulativeCount())
			}
		}
	}
	add(after[name], 1)
	add(before[name], -1)
	return g
}

// hasLabel reports whether m carries the label name with value.
func hasLabel(m *dto.Metric, name, value string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue() == value
		}
	}
	return false
}

// mean is the mean observation times scale, printed with format, or n/a
// when there was none.
func (g growth) mean(scale float64, format string) string {
	if g.count == 0 {
		return "n/a"
	}
	return fmt.Sprintf(format, g.sum/g.count*scale)
}

// under is the share of observations at most le, one of the histogram's
// bucket bounds; n/a when there were none or le is not a bound.
func (g growth) under(le float64) string {
	n, ok := g.buckets[le]
	if g.count == 0 || !ok {
		return "n/a"
	}
	return fmt.Sprintf("%.1f%%", 100*n/g.count)
}

// over is how many observations were above le, one of the histogram's
// bucket bounds; n/a when le is not a bound.
func (g growth) over(le float64) string {
	n, ok := g.buckets[le]
	if !ok {
		return "n/a"
	}
	return fmt.Sprintf("%.0f", g.count-n)
}

// vmHWM reads a process's peak resident set size in KiB from /proc.
func vmHWM(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return n
		}
	}
	return 0
}

// loadBackend is the stub backend process, queried over its own HTTP API.
type loadBackend struct {
	proc *process
	url  string
	ctl  string
}

func (lt *loadTarget) backend(t *testing.T) *loadBackend {
	addr := freeport.Addr(t)
	p := startRole(t, "backend", addr, "")
	waitHTTP(t, "http://"+addr+"/ready")
	return &loadBackend{proc: p, url: "http://" + addr + "/events", ctl: "http://" + addr}
}

func (b *loadBackend) stats() (delivered int64, e2e []time.Duration) {
	resp, err := http.Get(b.ctl + "/stats")
	if err != nil {
		return 0, nil
	}
	defer resp.Body.Close()
	var s backendStats
	json.NewDecoder(resp.Body).Decode(&s)
	return s.Delivered, s.EndToEnd
}

func (b *loadBackend) delivered() int64 { n, _ := b.stats(); return n }

func (b *loadBackend) reset() {
	if resp, err := http.Post(b.ctl+"/reset", "", nil); err == nil {
		resp.Body.Close()
	}
}

// waitIdle waits until no delivery arrived for a moment.
func (b *loadBackend) waitIdle(limit time.Duration) {
	deadline := time.Now().Add(limit)
	last := b.delivered()
	for time.Now().Before(deadline) {
		time.Sleep(300 * time.Millisecond)
		n := b.delivered()
		if n == last {
			return
		}
		last = n
	}
}

func (b *loadBackend) waitFor(n int64, limit time.Duration) {
	deadline := time.Now().Add(limit)
	for b.delivered() < n && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
}

type backendStats struct {
	Delivered int64           `json:"delivered"`
	EndToEnd  []time.Duration `json:"end_to_end"`
}

// Roles this test binary plays as a separate process in the load test.
const (
	roleEnv = "HOOKBRIDGE_TEST_LOAD_ROLE"
)

// startRole starts this test binary as the given role, listening on addr.
func startRole(t *testing.T, role, addr, oidc string) *process {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), roleEnv+"="+role, "HOOKBRIDGE_TEST_LOAD_ADDR="+addr, "HOOKBRIDGE_TEST_LOAD_OIDC="+oidc)
	return startProcess(t, cmd)
}

// loadRole runs the role named by roleEnv, if any, and reports whether it
// did (TestMain then exits).
func loadRole() bool {
	role := os.Getenv(roleEnv)
	if role == "" {
		return false
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	addr := os.Getenv("HOOKBRIDGE_TEST_LOAD_ADDR")
	var h http.Handler
	switch role {
	case "verify-only":
		h = verifyOnlyHandler(ctx, os.Getenv("HOOKBRIDGE_TEST_LOAD_OIDC"))
	case "backend":
		h = stubBackend()
	default:
		fmt.Fprintln(os.Stderr, "unknown role", role)
		os.Exit(2)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	srv := &http.Server{Handler: h}
	go func() { <-ctx.Done(); srv.Close() }()
	srv.Serve(l)
	return true
}

// verifyOnlyHandler is the baseline the ingress is measured against: Echo
// with the Call Automation verifier (keyfunc, RS256) reading the body and
// answering 200, and nothing else.
func verifyOnlyHandler(ctx context.Context, oidc string) http.Handler {
	v, err := ingress.NewACSVerifier(ingress.ACSConfig{Audiences: []string{"acs-resource"}, OIDCURL: oidc})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	go v.Run(ctx)
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.GET("/ready", func(c echo.Context) error {
		if !v.Ready() {
			return c.NoContent(http.StatusServiceUnavailable)
		}
		return c.NoContent(http.StatusOK)
	})
	e.POST(ingress.PathACSCallbacks, func(c echo.Context) error {
		if _, err := v.Verify(c.Request()); err != nil {
			return c.NoContent(http.StatusUnauthorized)
		}
		if _, err := io.Copy(io.Discard, http.MaxBytesReader(c.Response(), c.Request().Body, 1<<20)); err != nil {
			return c.NoContent(http.StatusBadRequest)
		}
		return c.JSON(http.StatusOK, map[string]int{"accepted": 1})
	})
	return e
}

// stubBackend answers every event 200 and records how long after its
// request was due (data.operationContext, see run) the event arrived.
func stubBackend() http.Handler {
	var mu sync.Mutex
	var stats backendStats
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ready", func(http.ResponseWriter, *http.Request) {})
	mux.HandleFunc("POST /events", func(w http.ResponseWriter, r *http.Request) {
		var e struct {
			Data struct {
				Sent string `json:"operationContext"`
			} `json:"data"`
		}
		body, _ := io.ReadAll(r.Body)
		now := time.Now()
		json.Unmarshal(body, &e)
		sent, err := strconv.ParseInt(e.Data.Sent, 10, 64)
		mu.Lock()
		stats.Delivered++
		if err == nil {
			stats.EndToEnd = append(stats.EndToEnd, now.Sub(time.Unix(0, sent)))
		}
		mu.Unlock()
	})
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		json.NewEncoder(w).Encode(stats)
	})
	mux.HandleFunc("POST /reset", func(http.ResponseWriter, *http.Request) {
		mu.Lock()
		stats = backendStats{}
		mu.Unlock()
	})
	return mux
}
