package sqlite

import (
	"testing"
	"testing/synctest"
	"time"
)

// A leader lingering for more ops waits on no timer (in a synctest bubble,
// time passes only when every goroutine waits on one): a caller settling
// its messages one after another is not held up by the linger each time.
func TestCombinerLingerWaitsOnNoTimer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := &combiner{pending: []*op{{}}}
		start := time.Now()
		c.linger()
		if d := time.Since(start); d != 0 {
			t.Fatalf("with nothing more coming, the linger waited %s", d)
		}
	})
}
