package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hookbridge/hookbridge/internal/freeport"
	"github.com/hookbridge/hookbridge/internal/sbemu"
	"github.com/hookbridge/hookbridge/internal/testwait"
	"github.com/hookbridge/hookbridge/relay"
	"github.com/hookbridge/hookbridge/relay/sqlite"
)

// sqliteWith makes a queue file holding msgs and returns its URL.
func sqliteWith(t *testing.T, msgs ...relay.Message) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "q.db")
	q, err := sqlite.Open(context.Background(), sqlite.Config{Path: path}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if err := q.SendBatch(context.Background(), msgs); err != nil {
		t.Fatal(err)
	}
	return "sqlite:" + path
}

// TestWorkerShutdownAbandonsAtOnce: a worker stopped (SIGTERM) while its
// backend is stuck lets the delivery run for --shutdown-timeout, then
// abandons it with no backoff — it is not the backend's failure — and
// exits; the next worker delivers the event at once, although the stopped
// worker's backoff would have hidden it for half a minute.
func TestWorkerShutdownAbandonsAtOnce(t *testing.T) {
	t.Parallel()
	var requests atomic.Int32
	release := make(chan struct{})
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if requests.Add(1) == 1 {
			select { // the first delivery hangs
			case <-release:
			case <-r.Context().Done():
			}
		}
	}))
	defer backend.Close()
	defer close(release)
	queue := sqliteWith(t, callEvent(t, "Microsoft.Communication.CallConnected", 1, 0))

	admin := freeport.Addr(t)
	args := []string{"worker", "--queue", queue, "--deliver", backend.URL, "--min-backoff", "30s", "--max-backoff", "1m", "--shutdown-timeout", "300ms"}
	a := startWithEnv(t, os.Environ(), append(args, "--admin-listen", admin)...)
	waitHTTP(t, "http://"+admin+"/readyz")
	testwait.Until(t, 20*time.Second, "the first delivery started", func() bool { return requests.Load() == 1 })
	begin := time.Now()
	a.stop(t)
	if d := time.Since(begin); d > 5*time.Second {
		t.Errorf("the worker took %v to stop with a 300ms shutdown timeout", d)
	}
	if !strings.Contains(a.stderr.String(), "cut off by shutdown") {
		t.Errorf("the cut-off delivery is not logged:\n%s", a.stderr.String())
	}
	b := startWithEnv(t, os.Environ(), append(args, "--admin-listen", freeport.Addr(t))...)
	testwait.Until(t, 10*time.Second, "the next worker delivered the event", func() bool { return requests.Load() == 2 })
	b.stop(t)
}

// TestWorkerLogsSlowBackend: a backend slower than --delivery-timeout gets
// the event again; the worker says why, with cause delivery_timeout.
func TestWorkerLogsSlowBackend(t *testing.T) {
	t.Parallel()
	var requests atomic.Int32
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if requests.Add(1) == 1 {
			select { // the backend does the work, but answers too late
			case <-time.After(time.Second):
			case <-r.Context().Done():
			}
		}
	}))
	defer backend.Close()
	queue := sqliteWith(t, callEvent(t, "Microsoft.Communication.CallConnected", 1, 0))
	admin := freeport.Addr(t)
	w := startWithEnv(t, os.Environ(), "worker", "--queue", queue, "--deliver", backend.URL, "--admin-listen", admin,
		"--delivery-timeout", "200ms", "--min-backoff", "10ms", "--max-backoff", "20ms")
	waitHTTP(t, "http://"+admin+"/readyz")
	testwait.Until(t, 20*time.Second, "delivered on the second try", func() bool {
		return counter(t, "http://"+admin+"/metrics", "hookbridge_worker_deliveries_total", "outcome", "completed") == 1
	})
	w.stop(t)
	if !strings.Contains(w.stderr.String(), "cause=delivery_timeout") {
		t.Errorf("the slow delivery is not logged with cause=delivery_timeout:\n%s", w.stderr.String())
	}
}

// TestWorkerShutdownEndsRetryHold: on Service Bus a failed delivery is held,
// its lock renewed, for its retry delay. A worker stopped meanwhile gives
// the message back at once and exits within --shutdown-timeout, instead of
// waiting out the delay (and being killed with the message still locked);
// the next worker delivers it well before the lock would have expired.
func TestWorkerShutdownEndsRetryHold(t *testing.T) {
	t.Parallel()
	emu := emulate(t, sbemu.QueueConfig{Name: "held", RequiresSession: true, LockDuration: 30 * time.Second})
	var requests atomic.Int32
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if requests.Add(1) == 1 {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	defer backend.Close()
	if err := sbQueue(t, emu, "held").SendBatch(context.Background(), []relay.Message{callEvent(t, "Microsoft.Communication.CallConnected", 1, 0)}); err != nil {
		t.Fatal(err)
	}
	args := []string{"worker", "--queue", "servicebus:///held", "--deliver", backend.URL,
		"--min-backoff", "1m", "--max-backoff", "1m", "--shutdown-timeout", "300ms"}
	a := startWithEnv(t, sbEnv(emu), append(args, "--admin-listen", freeport.Addr(t))...)
	testwait.Until(t, 20*time.Second, "the first delivery failed", func() bool { return requests.Load() == 1 })
	time.Sleep(300 * time.Millisecond) // the worker is holding the message for its retry delay
	begin := time.Now()
	a.stop(t)
	if d := time.Since(begin); d > 5*time.Second {
		t.Errorf("the worker took %v to stop with a 300ms shutdown timeout while holding a message for its retry delay:\n%s", d, a.stderr.String())
	}
	b := startWithEnv(t, sbEnv(emu), append(args, "--admin-listen", freeport.Addr(t))...)
	testwait.Until(t, 15*time.Second, "the next worker delivered the event", func() bool { return requests.Load() == 2 })
	b.stop(t)
}
