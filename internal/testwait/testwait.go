// Package testwait bounds how long a test waits: a context for blocking
// calls that ends after a timeout (or with the test), and a poll that fails
// the test when a condition does not come true in time.
//
//	msgs, err := q.Receive(testwait.Context(t, 10*time.Second), 1)
//	testwait.Until(t, 10*time.Second, "the spool drained", func() bool { return sp.State().Mode == spool.ModeDirect })
package testwait

import (
	"context"
	"testing"
	"time"
)

// pollEvery is how often Until checks its condition.
const pollEvery = 10 * time.Millisecond

// Context returns a context that ends after d, or when the test's cleanups
// run, whichever comes first.
func Context(t testing.TB, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// Until checks cond every 10ms until it holds, and fails the test (with
// Fatalf, from the test's goroutine) if it does not within d. what says
// what was awaited, for the failure message.
func Until(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(pollEvery)
	}
}
