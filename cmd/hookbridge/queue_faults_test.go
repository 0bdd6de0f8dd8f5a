package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hookbridge/hookbridge/internal/freeport"
	"github.com/hookbridge/hookbridge/internal/sqlitetest"
	"github.com/hookbridge/hookbridge/relay"
	"github.com/hookbridge/hookbridge/relay/sqlite"
)

// postCallback posts one signed-by-key callback and returns the status.
func postCallback(t *testing.T, base, id string) int {
	t.Helper()
	body := fmt.Sprintf(`[{"specversion":"1.0","id":%q,"source":"calling/callConnections/c1","type":"Microsoft.Communication.PlayCompleted","data":{"correlationId":"call-1"}}]`, id)
	resp, err := http.Post(base+"/acs/callbacks?key="+testACSKey, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatalf("post %s: %v", id, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

func readyzStatus(t *testing.T, admin string) (int, string) {
	t.Helper()
	resp, err := http.Get(admin + "/readyz")
	if err != nil {
		t.Fatalf("readyz: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// waitReadyz waits until /readyz answers want.
func waitReadyz(t *testing.T, admin string, want int, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		s, body := readyzStatus(t, admin)
		if s == want {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("/readyz still %d %s after %v, want %d", s, body, limit, want)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// eventIDs drains the queue at path and returns the events' ids.
func eventIDs(t *testing.T, path string) map[string]bool {
	t.Helper()
	q := sqlitetest.Open(t, sqlite.Config{Path: path})
	got := map[string]bool{}
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		msgs, err := q.Receive(ctx, 64)
		cancel()
		if err != nil {
			return got
		}
		for _, m := range msgs {
			id, _ := m.Properties[relay.PropID].(string)
			got[id] = true
			if err := q.Complete(context.Background(), m); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestIngressStopsWhenItsLogIsDeleted deletes the embedded queue's
// write-ahead log under a running `hookbridge ingress`, as an operator
// cleaning up might: from then on the ingress answers 503 and /readyz fails,
// saying to restart, instead of acknowledging events written to an unlinked
// file; after a SIGKILL every event it had acknowledged is in the queue.
func TestIngressStopsWhenItsLogIsDeleted(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("process test skipped in -short mode")
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "q.db")
	p, base, admin := startIngressProcess(t, "--queue", "sqlite:"+path)
	var acked []string
	for i := range 100 {
		id := fmt.Sprintf("before-%d", i)
		if s := postCallback(t, base, id); s != 200 {
			t.Fatalf("%s: %d", id, s)
		}
		acked = append(acked, id)
	}
	if err := os.Remove(path + "-wal"); err != nil {
		t.Fatal(err)
	}
	refused := 0
	for i := range 50 {
		id := fmt.Sprintf("after-%d", i)
		switch s := postCallback(t, base, id); s {
		case 200:
			acked = append(acked, id) // accepted before the deletion was noticed
		case 503:
			refused++
		default:
			t.Fatalf("%s: %d", id, s)
		}
	}
	if refused < 45 {
		t.Errorf("only %d of 50 requests after the log's deletion were refused", refused)
	}
	if s, body := readyzStatus(t, admin); s != 503 || !strings.Contains(body, "restart") {
		t.Errorf("/readyz after the deletion: %d %s, want 503 saying to restart", s, body)
	}
	if !strings.Contains(p.stderr.String(), "write-ahead log was deleted") {
		t.Errorf("no log line about the deleted log:\n%s", p.stderr.String())
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	p.cmd.Wait()
	got := eventIDs(t, path)
	for _, id := range acked {
		if !got[id] {
			t.Errorf("acknowledged event %s lost", id)
		}
	}
}

// TestIngressReadinessFollowsWrites makes the embedded queue's log
// immutable under a running `hookbridge ingress`: requests get 503, and
// /readyz fails even while no request comes (its probe writes); once the
// attribute is removed, both recover.
func TestIngressReadinessFollowsWrites(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("process test skipped in -short mode")
	}
	path := filepath.Join(t.TempDir(), "q.db")
	_, base, admin := startIngressProcess(t, "--queue", "sqlite:"+path)
	if s := postCallback(t, base, "first"); s != 200 {
		t.Fatalf("first: %d", s)
	}
	if out, err := exec.Command("chattr", "+i", path+"-wal").CombinedOutput(); err != nil {
		sqlitetest.NeedsPrivilege(t, fmt.Sprintf("chattr +i needs root and a file system with attributes: %v: %s", err, out))
	}
	t.Cleanup(func() { exec.Command("chattr", "-i", path+"-wal").Run() })
	// Readiness trusts a write of the last second; then it probes.
	waitReadyz(t, admin, 503, 3*time.Second)
	if s := postCallback(t, base, "blocked"); s != 503 {
		t.Errorf("a request with an immutable log: %d, want 503", s)
	}
	if out, err := exec.Command("chattr", "-i", path+"-wal").CombinedOutput(); err != nil {
		t.Fatalf("chattr -i: %v: %s", err, out)
	}
	waitReadyz(t, admin, 200, 3*time.Second)
	if s := postCallback(t, base, "after"); s != 200 {
		t.Errorf("a request once writable again: %d", s)
	}
}

// TestIngressAndWorkerStartTogether starts `hookbridge ingress` and
// `hookbridge worker` at the same moment on a new queue file, again and
// again: neither may fail on the switch to write-ahead logging ("database
// is locked").
func TestIngressAndWorkerStartTogether(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("process test skipped in -short mode")
	}
	for round := range 10 {
		queue := "sqlite:" + filepath.Join(t.TempDir(), fmt.Sprintf("new-%d.db", round))
		ingAdmin, wrkAdmin := freeport.Addr(t), freeport.Addr(t)
		ing := start(t, "ingress", "--queue", queue, "--listen", "127.0.0.1:0", "--admin-listen", ingAdmin, "--insecure-allow-unauthenticated", "--drain-delay", "0s")
		wrk := start(t, "worker", "--queue", queue, "--admin-listen", wrkAdmin)
		waitHTTP(t, "http://"+ingAdmin+"/readyz")
		waitHTTP(t, "http://"+wrkAdmin+"/readyz")
		ing.stop(t)
		wrk.stop(t)
	}
}
