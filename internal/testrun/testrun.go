// Package testrun runs a component's background loop (a Run(ctx) error
// method: a worker, a queue's session pool, a spool's forwarder) for a
// test, and stops it: stop ends the loop's context and waits for it to
// return. The test's end stops it if the test did not.
//
//	stop := testrun.Start(t, w.Run)
//	...
//	if err := stop(); err != nil { t.Errorf("Run: %v", err) }
package testrun

import (
	"context"
	"sync"
	"testing"
	"time"
)

// stopWithin bounds how long stop waits for the loop to return once its
// context ended.
const stopWithin = time.Minute

// Start runs run on a goroutine of its own until stop is called or the test
// ends. stop cancels run's context, waits for run to return and returns its
// error; later calls return the same error. If run has not returned a
// minute after its context ended, stop fails the test (call it from the
// test's goroutine).
func Start(t testing.TB, run func(context.Context) error) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	var (
		once sync.Once
		err  error
	)
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(stopWithin):
				t.Fatalf("testrun: the loop did not return within %v after its context ended", stopWithin)
			}
		})
		return err
	}
	t.Cleanup(func() { stop() })
	return stop
}
