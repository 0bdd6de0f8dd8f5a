package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hookbridge/hookbridge/internal/freeport"
)

const testACSKey = "front-door-test-key-0123456789"

// startIngress runs `hookbridge ingress` with an API key on /acs/callbacks
// and returns the process, its public and admin base URLs.
func startIngressProcess(t *testing.T, args ...string) (*process, string, string) {
	t.Helper()
	listen, admin := freeport.Addr(t), freeport.Addr(t)
	args = append([]string{"ingress", "--listen", listen, "--admin-listen", admin,
		"--queue", "sqlite:" + filepath.Join(t.TempDir(), "q.db")}, args...)
	p := startWithEnv(t, append(os.Environ(), envACSAPIKeys+"="+testACSKey), args...)
	waitHTTP(t, "http://"+admin+"/readyz")
	return p, "http://" + listen, "http://" + admin
}

// TestIngressMemoryUnderOversizedBatches: 64 credentialed senders post, at
// once, 1 MiB arrays of 349,000 empty objects (far past the 5,000-event
// cap). Each is refused with 413 once counted past the cap, nothing decoded,
// and the bodies in flight are bounded, so the ingress's peak resident
// memory stays under 150 MB (it was about 1.4 GB when each body was decoded
// whole first).
func TestIngressMemoryUnderOversizedBatches(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("process test skipped in -short mode")
	}
	p, base, _ := startIngressProcess(t)
	body := []byte("[" + strings.Repeat("{},", 349_000) + "{}]")
	if len(body) > 1<<20 {
		t.Fatalf("body of %d bytes is over the default limit", len(body))
	}
	client := &http.Client{Timeout: 60 * time.Second}
	for round := range 2 {
		var wg sync.WaitGroup
		errs := make(chan error, 64)
		for range 64 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				resp, err := client.Post(base+"/acs/callbacks?key="+testACSKey, "application/json", bytes.NewReader(body))
				if err != nil {
					errs <- err
					return
				}
				msg, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusRequestEntityTooLarge && resp.StatusCode != http.StatusServiceUnavailable {
					errs <- fmt.Errorf("status %d %s, want 413 (or 503 when the body budget stays full)", resp.StatusCode, msg)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Errorf("round %d: %v", round, err)
		}
	}
	hwm := vmHWM(p.cmd.Process.Pid) << 10 // KiB
	if hwm == 0 {
		t.Skip("no VmHWM in /proc to read the peak memory from")
	}
	t.Logf("ingress peak resident memory: %.1f MB", float64(hwm)/1e6)
	if hwm > 150e6 {
		t.Errorf("peak resident memory %.1f MB, want under 150 MB", float64(hwm)/1e6)
	}
	if strings.Contains(p.stderr.String(), testACSKey) {
		t.Error("the API key reached the log")
	}
}

// TestIngressDrainsOnSIGTERM: on SIGTERM `hookbridge ingress` fails
// readiness at once and keeps answering events for --drain-delay, then
// closes its public listener and, last, its admin listener.
func TestIngressDrainsOnSIGTERM(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("process test skipped in -short mode")
	}
	p, base, admin := startIngressProcess(t, "--drain-delay", "3s")
	client := &http.Client{Timeout: 10 * time.Second}
	send := func(i int) (int, error) {
		body := strings.NewReader(fmt.Sprintf(`[{"specversion":"1.0","id":"drain-%d","source":"s","type":"t","data":{}}]`, i))
		resp, err := client.Post(base+"/acs/callbacks?key="+testACSKey, "application/json", body)
		if err != nil {
			return 0, err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	readyz := func() (int, error) {
		resp, err := client.Get(admin + "/readyz")
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	if s, err := send(0); s != 200 {
		t.Fatalf("before SIGTERM: %d %v", s, err)
	}
	signalled := time.Now()
	p.cmd.Process.Signal(syscall.SIGTERM)
	// The process handles the signal asynchronously: readiness fails within
	// moments, and stays failed; events are answered throughout.
	failed := false
	for i := 1; time.Since(signalled) < time.Second; i++ {
		if s, err := send(i); s != 200 {
			t.Fatalf("%v after SIGTERM: %d %v, want 200 during the drain delay", time.Since(signalled), s, err)
		}
		s, err := readyz()
		switch {
		case s == 503:
			failed = true
		case failed || time.Since(signalled) > 250*time.Millisecond:
			t.Fatalf("%v after SIGTERM: readyz %d %v, want 503", time.Since(signalled), s, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit: %v\n%s", err, p.stderr.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no exit after SIGTERM")
	}
	if time.Since(signalled) < 3*time.Second {
		t.Errorf("exited %v after SIGTERM, before the drain delay", time.Since(signalled))
	}
	logs := p.stderr.String()
	for _, want := range []string{"terminated signal received", "ingress draining", "ingress closing its listener"} {
		if !strings.Contains(logs, want) {
			t.Errorf("log does not say %q:\n%s", want, logs)
		}
	}
}

func TestIngressFlagErrors(t *testing.T) {
	t.Parallel()
	queue := "sqlite:" + filepath.Join(t.TempDir(), "q.db")
	spoolURL := "sqlite:" + filepath.Join(t.TempDir(), "spool.db")
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--rate-burst", "20"}, "--rate-limit"},
		{[]string{"--acs-replay-defence", "sometimes"}, "--acs-replay-defence"},
		// A queue whose largest message is smaller than a body.
		{[]string{"--queue", queue + "?max_message_bytes=262144"}, "max_message_bytes"},
		// So with a spool, which takes the events while Service Bus fails.
		{[]string{"--queue", "servicebus:///q", "--spool", spoolURL + "?max_message_bytes=262144"}, "max_message_bytes"},
	}
	for _, tt := range tests {
		args := append([]string{"ingress", "--queue", queue, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--insecure-allow-unauthenticated"}, tt.args...)
		_, _, err := runCLI(t, nil, args...)
		var ue usageError
		if err == nil || !strings.Contains(err.Error(), tt.want) || !errors.As(err, &ue) {
			t.Errorf("%v: %v, want a usage error naming %s", tt.args, err, tt.want)
		}
	}
	// Refused before anything was created.
	for _, u := range []string{queue, spoolURL} {
		if _, err := os.Stat(strings.TrimPrefix(u, "sqlite:")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s exists after refused flags: %v", u, err)
		}
	}
}
