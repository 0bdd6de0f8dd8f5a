package main

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/hookbridge/hookbridge/internal/freeport"
)

// TestStrayArgumentIsUsageError: a positional argument no command takes is
// a mistake on the command line, exit status 2, naming what to read.
func TestStrayArgumentIsUsageError(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"worker", "extra"}, {"ingress", "extra"}, {"dlq", "list", "extra"}, {"version", "x"}} {
		_, _, err := runCLI(t, nil, args...)
		var ue usageError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), "-h") {
			t.Errorf("hookbridge %s: %v, want a usage error (exit 2) pointing to -h", strings.Join(args, " "), err)
		}
	}
}

// TestEnvironmentSurvivesCommandHooks: a command with a pre-run hook of its
// own still has its flags filled from the environment (cobra runs only the
// nearest hook).
func TestEnvironmentSurvivesCommandHooks(t *testing.T) {
	t.Parallel()
	var got string
	root := &cobra.Command{Use: "x", SilenceErrors: true, SilenceUsage: true}
	child := &cobra.Command{
		Use:               "child",
		PersistentPreRunE: func(*cobra.Command, []string) error { return nil },
		RunE:              func(*cobra.Command, []string) error { return nil },
	}
	child.Flags().StringVar(&got, "some-name", "default", "")
	root.AddCommand(child)
	prepare(root, func(k string) string {
		if k == "HOOKBRIDGE_SOME_NAME" {
			return "from-env"
		}
		return ""
	})
	root.SetArgs([]string{"child"})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	if got != "from-env" {
		t.Errorf("flag = %q, want the environment's value", got)
	}
}

// TestShutdownTimeoutHonoured: `hookbridge ingress` sharing its file with a
// worker stops within --drain-delay plus --shutdown-timeout (and a margin
// for closing files), exit 0; a second SIGTERM during a long drain ends it
// at once.
func TestShutdownTimeoutHonoured(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("process test skipped in -short mode")
	}
	queue := "sqlite:" + filepath.Join(t.TempDir(), "q.db")
	worker := start(t, "worker", "--queue", queue, "--admin-listen", "127.0.0.1:0", "--deliver", "http://127.0.0.1:9")
	defer worker.stop(t)

	for _, tt := range []struct {
		name   string
		args   []string
		second bool
		within time.Duration
	}{
		{"timeout", []string{"--drain-delay", "0s", "--shutdown-timeout", "2s"}, false, 2*time.Second + shutdownMargin},
		{"second signal", []string{"--drain-delay", "60s"}, true, 3 * time.Second},
	} {
		t.Run(tt.name, func(t *testing.T) {
			admin := freeport.Addr(t)
			args := append([]string{"ingress", "--queue", queue, "--listen", "127.0.0.1:0", "--admin-listen", admin,
				"--insecure-allow-unauthenticated"}, tt.args...)
			p := start(t, args...)
			waitHTTP(t, "http://"+admin+"/readyz")
			begin := time.Now()
			p.cmd.Process.Signal(syscall.SIGTERM)
			if tt.second {
				// Draining: readiness fails while the listener serves on.
				deadline := time.Now().Add(5 * time.Second)
				for time.Now().Before(deadline) {
					resp, err := http.Get("http://" + admin + "/readyz")
					if err == nil {
						resp.Body.Close()
						if resp.StatusCode == http.StatusServiceUnavailable {
							break
						}
					}
					time.Sleep(20 * time.Millisecond)
				}
				p.cmd.Process.Signal(syscall.SIGTERM)
			}
			done := make(chan error, 1)
			go func() { done <- p.cmd.Wait() }()
			select {
			case err := <-done:
				took := time.Since(begin)
				if took > tt.within {
					t.Errorf("stopped after %v, want within %v", took, tt.within)
				}
				ws, _ := p.cmd.ProcessState.Sys().(syscall.WaitStatus)
				switch {
				case !tt.second && err != nil:
					t.Errorf("exit: %v, want 0\n%s", err, p.stderr.String())
				case tt.second && !ws.Signaled():
					t.Errorf("after a second SIGTERM: %v, want the process ended by the signal", err)
				}
			case <-time.After(tt.within + 10*time.Second):
				t.Fatalf("still running %v after SIGTERM", tt.within+10*time.Second)
			}
		})
	}
}

// Background loops and the admin listener run until the last serving loop
// has returned, not merely until the command is told to stop: what a
// draining listener still accepts is forwarded, and readiness answers to
// the end.
func TestBackgroundOutlivesServing(t *testing.T) {
	t.Parallel()
	h := newHost(slog.New(slog.DiscardHandler))
	h.grace = 10 * time.Second
	admin, err := h.listenAdmin("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var servingReturned, backgroundStopped atomic.Int64
	adminDuringDrain := make(chan int, 1)
	h.serve(func(ctx context.Context) error {
		<-ctx.Done()
		// Draining: the admin listener must still answer.
		resp, err := http.Get("http://" + admin + "/healthz")
		code := 0
		if err == nil {
			code = resp.StatusCode
			resp.Body.Close()
		}
		adminDuringDrain <- code
		time.Sleep(100 * time.Millisecond)
		servingReturned.Store(time.Now().UnixNano())
		return nil
	})
	h.loop(func(ctx context.Context) error {
		<-ctx.Done()
		backgroundStopped.Store(time.Now().UnixNano())
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.run(ctx) }()
	time.Sleep(50 * time.Millisecond)
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
	if code := <-adminDuringDrain; code != http.StatusOK {
		t.Errorf("admin /healthz while serving drained: %d, want 200", code)
	}
	if s, b := servingReturned.Load(), backgroundStopped.Load(); b < s {
		t.Errorf("background loop stopped %v before the serving loop returned", time.Duration(s-b))
	}
}
