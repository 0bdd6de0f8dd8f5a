package sqlite_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hookbridge/hookbridge/internal/testlog"
	"github.com/hookbridge/hookbridge/relay"
	"github.com/hookbridge/hookbridge/relay/sqlite"
)

const crashChildEnv = "HOOKBRIDGE_TEST_CRASH_CHILD_DB"

// crashBody is the deterministic body of a crash-test message, long enough
// to span database pages.
func crashBody(id string) []byte {
	return []byte(fmt.Sprintf(`{"id":%q,"pad":%q}`, id, strings.Repeat(id, 200)))
}

// TestMain lets the test binary act as the crash test's child process.
func TestMain(m *testing.M) {
	if path := os.Getenv(crashChildEnv); path != "" {
		crashChild(path)
		return
	}
	if path := os.Getenv(walChildEnv); path != "" {
		walChild(path)
		return
	}
	os.Exit(m.Run())
}

// startChild runs this test binary as the child role that env names
// (crashChildEnv, walChildEnv) on the queue file at path. It returns the
// running command, its standard output, and its standard error as it is
// written.
func startChild(t *testing.T, env, path string) (*exec.Cmd, io.Reader, *testlog.Buffer) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), env+"="+path)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := &testlog.Buffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd, stdout, stderr
}

// crashChild publishes requests of 1-5 messages from 8 goroutines through the
// group-commit batcher, printing "ack <id> <id>..." for each request once
// Publish returned nil, until it is killed.
func crashChild(path string) {
	q, err := sqlite.Open(context.Background(), sqlite.Config{Path: path}, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	b, err := relay.NewBatcher(q, relay.BatchConfig{}, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	go b.Run(context.Background())
	var out sync.Mutex
	w := bufio.NewWriter(os.Stdout)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				n := 1 + (i+g)%5
				msgs := make([]relay.Message, n)
				ids := make([]string, n)
				for j := range msgs {
					ids[j] = fmt.Sprintf("g%d-r%d-m%d", g, i, j)
					msgs[j] = relay.Message{ID: ids[j], SessionID: fmt.Sprintf("g%d", g), Subject: "Crash", ContentType: "application/json", Body: crashBody(ids[j])}
				}
				if err := b.Publish(context.Background(), msgs); err != nil {
					fmt.Fprintln(os.Stderr, "publish:", err)
					os.Exit(3)
				}
				out.Lock()
				fmt.Fprintf(w, "ack %s\n", strings.Join(ids, " "))
				w.Flush()
				out.Unlock()
			}
		}()
	}
	wg.Wait()
}

// TestCrashKeepsAcknowledgedMessages kills a child process in the middle of
// writing, several times, and checks that the reopened queue holds every
// message whose Publish had returned, each intact, and every request whole or
// not at all.
func TestCrashKeepsAcknowledgedMessages(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("crash test skipped in -short mode")
	}
	path := filepath.Join(t.TempDir(), "crash.db")
	acked := map[string]bool{}
	rounds := 3
	if raceEnabled {
		rounds = 1
	}
	for round := range rounds {
		cmd, stdout, stderr := startChild(t, crashChildEnv, path)
		sc := bufio.NewScanner(stdout)
		killAfter := 300 + 200*round // acknowledged requests before the kill
		n := 0
		for sc.Scan() {
			ids := strings.Fields(strings.TrimPrefix(sc.Text(), "ack "))
			for _, id := range ids {
				acked[id] = true
			}
			n++
			if n == killAfter {
				cmd.Process.Signal(syscall.SIGKILL)
			}
		}
		cmd.Wait()
		if n < killAfter {
			t.Fatalf("round %d: child stopped after %d requests: %s", round, n, stderr.String())
		}
	}
	q, err := sqlite.Open(context.Background(), sqlite.Config{Path: path}, nil)
	if err != nil {
		t.Fatalf("reopen after crash: %v", err)
	}
	defer q.Close()
	found := map[string]bool{}
	for {
		active, _, err := q.Counts(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if active == 0 {
			break
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		msgs, err := q.Receive(ctx, 500)
		cancel()
		if err != nil {
			t.Fatalf("receive with %d messages left: %v", active, err)
		}
		for _, m := range msgs {
			if string(m.Body) != string(crashBody(m.ID)) {
				t.Fatalf("message %s is damaged: %.80s", m.ID, m.Body)
			}
			if found[m.ID] {
				t.Fatalf("message %s stored twice", m.ID)
			}
			found[m.ID] = true
			if err := q.Complete(context.Background(), m); err != nil {
				t.Fatal(err)
			}
		}
	}
	for id := range acked {
		if !found[id] {
			t.Errorf("acknowledged message %s lost in the crash", id)
		}
	}
	// A request is whole or absent: IDs are g<G>-r<R>-m<J>, and request R of
	// goroutine G had 1+(R+G)%5 messages.
	byRequest := map[string]int{}
	for id := range found {
		byRequest[id[:strings.LastIndex(id, "-m")]]++
	}
	for prefix, got := range byRequest {
		var r, g, want int
		fmt.Sscanf(prefix, "g%d-r%d", &g, &r)
		want = 1 + (r+g)%5
		if got != want {
			t.Errorf("request %s stored partially: %d of %d messages", prefix, got, want)
		}
	}
	t.Logf("%d acknowledged, %d stored (unacknowledged but committed: %d)", len(acked), len(found), len(found)-len(acked))
}
