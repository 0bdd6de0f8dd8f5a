package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hookbridge/hookbridge/internal/freeport"
	"github.com/hookbridge/hookbridge/internal/sbemu"
	"github.com/hookbridge/hookbridge/internal/testwait"
	"github.com/hookbridge/hookbridge/relay"
)

// callLog records, per call, the sequence numbers a backend received, and
// each arrival that came after a later event of its call.
type callLog struct {
	mu         sync.Mutex
	seen       map[string]map[int]int // call → seq → deliveries
	last       map[string]int
	violations []string
}

func newCallLog() *callLog {
	return &callLog{seen: map[string]map[int]int{}, last: map[string]int{}}
}

func (c *callLog) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var e struct {
		Key  string `json:"partitionkey"`
		Data struct {
			Seq int `json:"seq"`
		} `json:"data"`
	}
	if err := json.NewDecoder(r.Body).Decode(&e); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	time.Sleep(2 * time.Millisecond) // a backend doing some work
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.seen[e.Key] == nil {
		c.seen[e.Key] = map[int]int{}
		c.last[e.Key] = -1
	}
	if e.Data.Seq < c.last[e.Key] {
		c.violations = append(c.violations, fmt.Sprintf("%s seq %d after seq %d", e.Key, e.Data.Seq, c.last[e.Key]))
	}
	c.last[e.Key] = max(c.last[e.Key], e.Data.Seq)
	c.seen[e.Key][e.Data.Seq]++
}

// distinct is how many different events arrived.
func (c *callLog) distinct() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, s := range c.seen {
		n += len(s)
	}
	return n
}

// TestWorkerSIGTERMKeepsEachCallInOrder runs two `hookbridge worker`
// processes on one Service Bus queue (the emulator) while 1,000 events of
// 10 calls stream in, and sends SIGTERM to one of them mid-run, as a
// rolling deploy does. The stopping worker must give its sessions back in
// order: the backend sees every event, and no event after a later one of
// its call.
func TestWorkerSIGTERMKeepsEachCallInOrder(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("process test skipped in -short mode")
	}
	const (
		calls   = 10
		perCall = 100
		lock    = 20 * time.Second // a message stranded under a lock would arrive this late
	)
	emu := emulate(t, sbemu.QueueConfig{Name: "ev", RequiresSession: true, RequiresDuplicateDetection: true, LockDuration: lock})
	backendLog := newCallLog()
	backend := httptest.NewServer(backendLog)
	defer backend.Close()

	env := sbEnv(emu)
	args := func(admin string) []string {
		return []string{"worker", "--queue", "servicebus:///ev?session_idle=500ms", "--deliver", backend.URL, "--admin-listen", admin,
			"--concurrency", "4", "--shutdown-timeout", "10s"}
	}
	adminA, adminB := freeport.Addr(t), freeport.Addr(t)
	a := startWithEnv(t, env, args(adminA)...)
	b := startWithEnv(t, env, args(adminB)...)
	waitHTTP(t, "http://"+adminA+"/readyz")
	waitHTTP(t, "http://"+adminB+"/readyz")

	// The events stream in, a batch of one per call every few milliseconds.
	q := sbQueue(t, emu, "ev")
	sent := make(chan error, 1)
	go func() {
		for seq := range perCall {
			batch := make([]relay.Message, 0, calls)
			for c := range calls {
				batch = append(batch, callEvent(t, "Microsoft.Communication.PlayCompleted", c, seq))
			}
			if err := q.SendBatch(context.Background(), batch); err != nil {
				sent <- err
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
		sent <- nil
	}()

	testwait.Until(t, 30*time.Second, "a third of the events delivered", func() bool { return backendLog.distinct() >= calls*perCall/3 })
	stopped := time.Now()
	a.stop(t) // SIGTERM; fails the test unless it exits 0 within 20s
	t.Logf("worker A stopped in %v after %d events", time.Since(stopped), backendLog.distinct())
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	testwait.Until(t, lock+30*time.Second, fmt.Sprintf("all %d events delivered", calls*perCall), func() bool {
		return backendLog.distinct() == calls*perCall
	})
	b.stop(t)

	backendLog.mu.Lock()
	defer backendLog.mu.Unlock()
	for _, v := range backendLog.violations {
		t.Errorf("out of order: %s", v)
	}
	dups := 0
	for _, s := range backendLog.seen {
		for _, n := range s {
			dups += n - 1
		}
	}
	t.Logf("%d events delivered, %d duplicates, %d order violations", calls*perCall, dups, len(backendLog.violations))
	if strings.Contains(a.stderr.String(), "level=ERROR") {
		t.Errorf("worker A logged errors while stopping:\n%s", a.stderr.String())
	}
}
