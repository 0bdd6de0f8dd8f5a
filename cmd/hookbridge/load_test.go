package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hookbridge/hookbridge/internal/devissuer"
)

// TestLoadLoopback drives `hookbridge ingress` (a real process) over
// loopback with signed callbacks from 64 keep-alive clients for a while, with
// `hookbridge worker` delivering to a local backend, and reports throughput,
// request latency, end-to-end latency and the ingress's peak resident
// memory. It takes about a minute, so it runs only when asked:
//
//	HOOKBRIDGE_LOAD_TEST=1 go test ./cmd/hookbridge -run TestLoadLoopback -v
func TestLoadLoopback(t *testing.T) {
	if os.Getenv("HOOKBRIDGE_LOAD_TEST") == "" {
		t.Skip("load test skipped; set HOOKBRIDGE_LOAD_TEST=1 to run it")
	}
	duration := 20 * time.Second
	if v, err := time.ParseDuration(os.Getenv("HOOKBRIDGE_LOAD_DURATION")); err == nil {
		duration = v
	}
	dir := t.TempDir()
	queue := "sqlite:" + filepath.Join(dir, "load.db")

	issSrv := httptest.NewUnstartedServer(nil)
	iss, err := devissuer.New("http://"+issSrv.Listener.Addr().String(), "acs-resource")
	if err != nil {
		t.Fatal(err)
	}
	issSrv.Config.Handler = iss.Handler()
	issSrv.Start()
	defer issSrv.Close()

	var delivered atomic.Int64
	var e2eMu sync.Mutex
	var e2e []time.Duration
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var e struct {
			Received time.Time `json:"hookbridgereceived"`
		}
		body, _ := io.ReadAll(r.Body)
		if err := json.Unmarshal(body, &e); err == nil {
			e2eMu.Lock()
			e2e = append(e2e, time.Since(e.Received))
			e2eMu.Unlock()
		}
		delivered.Add(1)
	}))
	defer backend.Close()

	listenAddr, adminAddr := freePort(t), freePort(t)
	ing := start(t, "ingress", "--queue", queue, "--listen", listenAddr, "--admin-listen", adminAddr,
		"--acs-audience", "acs-resource", "--acs-oidc-url", iss.DiscoveryURL(), "--log-level", "warn",
		// The pool of pre-signed tokens below is reused with new bodies,
		// which the replay defence would refuse.
		"--replay-cache-size", "-1")
	waitHTTP(t, "http://"+adminAddr+"/readyz")
	wrk := start(t, "worker", "--queue", queue, "--deliver", backend.URL, "--admin-listen", "127.0.0.1:0", "--concurrency", "32", "--log-level", "warn")

	// Signing is far dearer than verifying: sign a pool up front.
	toks := make([]string, 2048)
	var wg sync.WaitGroup
	for w := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < len(toks); i += 2 {
				toks[i], _ = iss.ACSToken("")
			}
		}()
	}
	wg.Wait()

	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 128}}
	var sent, failed atomic.Int64
	var latMu sync.Mutex
	var lat []time.Duration
	var peakRSS atomic.Int64
	stop := time.Now().Add(duration)
	done := make(chan struct{})
	go func() { // sample the ingress's resident memory
		for {
			select {
			case <-done:
				return
			case <-time.After(200 * time.Millisecond):
				if kb := vmHWM(ing.cmd.Process.Pid); kb > peakRSS.Load() {
					peakRSS.Store(kb)
				}
			}
		}
	}()
	for c := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := c; time.Now().Before(stop); i += 64 {
				body := fmt.Sprintf(`[{"specversion":"1.0","id":"load-%d","source":"calling/callConnections/c%d","type":"Microsoft.Communication.PlayCompleted","datacontenttype":"application/json","data":{"callConnectionId":"c%d","correlationId":"call-%d","operationContext":"load","resultInformation":{"code":200,"subCode":0,"message":"ok"}}}]`, i, i%500, i%500, i%500)
				req, _ := http.NewRequest(http.MethodPost, "http://"+listenAddr+"/acs/callbacks", strings.NewReader(body))
				req.Header.Set("Authorization", "Bearer "+toks[i%len(toks)])
				req.Header.Set("Content-Type", "application/json")
				begin := time.Now()
				resp, err := client.Do(req)
				if err != nil {
					failed.Add(1)
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					failed.Add(1)
					continue
				}
				d := time.Since(begin)
				sent.Add(1)
				latMu.Lock()
				lat = append(lat, d)
				latMu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(done)
	accepted := sent.Load()
	deadline := time.Now().Add(60 * time.Second)
	for delivered.Load() < accepted && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	wrk.stop(t)
	ing.stop(t)
	if delivered.Load() < accepted {
		t.Errorf("%d accepted, %d delivered", accepted, delivered.Load())
	}
	if failed.Load() > 0 {
		t.Errorf("%d requests failed", failed.Load())
	}
	pct := func(d []time.Duration, p float64) time.Duration {
		slices.Sort(d)
		return d[min(len(d)-1, int(p*float64(len(d))))]
	}
	t.Logf("accepted %d signed callbacks in %v: %.0f req/s", accepted, duration, float64(accepted)/duration.Seconds())
	t.Logf("request latency p50 %v p99 %v", pct(lat, 0.5), pct(lat, 0.99))
	t.Logf("end to end (accepted → delivered) p50 %v p99 %v", pct(e2e, 0.5), pct(e2e, 0.99))
	t.Logf("ingress peak resident memory %.1f MiB", float64(peakRSS.Load())/1024)
	if peakRSS.Load() > 100*1024 {
		t.Errorf("ingress peak RSS %.1f MiB exceeds 100 MiB", float64(peakRSS.Load())/1024)
	}
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
