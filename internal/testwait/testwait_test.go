package testwait_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hookbridge/hookbridge/internal/testwait"
)

// recorder is a testing.TB that keeps cleanups and a fatal failure; Fatalf
// ends the calling goroutine, as testing's does.
type recorder struct {
	testing.TB
	cleanups []func()
	fatal    string
}

func (r *recorder) Helper()          {}
func (r *recorder) Cleanup(f func()) { r.cleanups = append(r.cleanups, f) }
func (r *recorder) Fatalf(f string, a ...any) {
	r.fatal = fmt.Sprintf(f, a...)
	runtime.Goexit()
}

// run calls fn as a test body would, on a goroutine of its own, and
// returns once it has ended (returned or failed).
func (r *recorder) run(fn func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn()
	}()
	<-done
}

func TestUntil(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name      string
		trueAfter time.Duration
		within    time.Duration
		wantFatal string
	}{
		{"holds at once", 0, time.Second, ""},
		{"holds in time", 50 * time.Millisecond, 5 * time.Second, ""},
		{"never holds in time", time.Hour, 100 * time.Millisecond, "the queue drained: not within 100ms"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := &recorder{TB: t}
			start := time.Now()
			var calls atomic.Int64
			r.run(func() {
				testwait.Until(r, tt.within, "the queue drained", func() bool {
					calls.Add(1)
					return time.Since(start) >= tt.trueAfter
				})
			})
			if r.fatal != tt.wantFatal {
				t.Errorf("failure %q, want %q", r.fatal, tt.wantFatal)
			}
			if tt.wantFatal != "" && time.Since(start) < tt.within {
				t.Errorf("gave up after %v, before %v", time.Since(start), tt.within)
			}
			if tt.trueAfter > 0 && calls.Load() < 2 {
				t.Errorf("cond checked %d times, want it polled", calls.Load())
			}
		})
	}
}

func TestContext(t *testing.T) {
	t.Parallel()
	t.Run("ends after its timeout", func(t *testing.T) {
		t.Parallel()
		r := &recorder{TB: t}
		ctx := testwait.Context(r, 50*time.Millisecond)
		select {
		case <-ctx.Done():
			if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
				t.Errorf("ended with %v, want the deadline", ctx.Err())
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the context did not end after its timeout")
		}
	})
	t.Run("ends with the test", func(t *testing.T) {
		t.Parallel()
		r := &recorder{TB: t}
		ctx := testwait.Context(r, time.Hour)
		if ctx.Err() != nil {
			t.Fatalf("ended at once: %v", ctx.Err())
		}
		for _, f := range r.cleanups {
			f()
		}
		if !errors.Is(ctx.Err(), context.Canceled) {
			t.Errorf("after the test's cleanups: %v, want canceled", ctx.Err())
		}
	})
}
