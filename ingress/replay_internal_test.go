package ingress

import (
	"fmt"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func testGuard(max int, mode ReplayDefence) *replayGuard {
	return newReplayGuard(max, mode, prometheus.NewCounter(prometheus.CounterOpts{Name: "evictions"}), slog.New(slog.DiscardHandler))
}

// BenchmarkReplayGuard measures the replay defence alone, the part of a
// Call Automation request the end-to-end benchmarks leave out because they
// reuse a pool of pre-signed tokens: hashing a real-sized token and body,
// recording the token, and marking it queued, with the cache at its default
// bound so eviction runs too.
func BenchmarkReplayGuard(b *testing.B) {
	g := testGuard(DefaultReplayCacheSize, ReplayAuto)
	body := make([]byte, 600)
	expires := time.Now().Add(time.Hour)
	var seq atomic.Int64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		tok := make([]byte, 0, 900)
		creds := make([]Credential, 1)
		for pb.Next() {
			i := seq.Add(1)
			tok = fmt.Appendf(tok[:0], "%0900d", i)
			creds[0] = Credential{Token: string(tok), Expires: expires, JTI: "x"}
			t, err := g.check(creds, body, time.Now())
			if err != nil || t.seen {
				b.Fatalf("fresh token: seen %v, err %v", t.seen, err)
			}
			g.release(t, true)
		}
	})
}

func TestReplayGuardBound(t *testing.T) {
	t.Parallel()
	g := testGuard(100, ReplayStrict)
	exp := time.Now().Add(time.Minute)
	for i := range 1000 {
		tok := string(rune('a'+i%26)) + string(rune(i))
		tk, err := g.check([]Credential{{Token: tok, Expires: exp}}, []byte("body"), time.Now())
		if err != nil {
			t.Fatal(err)
		}
		g.release(tk, true)
		if g.lru.Len() > 100 {
			t.Fatalf("%d entries, bound 100", g.lru.Len())
		}
	}
	if testutil.ToFloat64(g.evictions) == 0 {
		t.Error("no evictions counted")
	}
	// Expired entries are swept without eviction.
	g2 := testGuard(100, ReplayStrict)
	past := time.Now().Add(-time.Second)
	for i := range 50 {
		tk, _ := g2.check([]Credential{{Token: string(rune(i)), Expires: past}}, []byte("b"), time.Now())
		g2.release(tk, true)
	}
	g2.check([]Credential{{Token: "fresh", Expires: exp}}, []byte("b"), time.Now())
	if n, ev := g2.lru.Len(), testutil.ToFloat64(g2.evictions); n != 1 || ev != 0 {
		t.Errorf("after a sweep: %d entries, %v evicted; want 1 and 0", n, ev)
	}
}

// An entry whose token expires while its request is still publishing is
// swept all the same once it is old, and its late release changes nothing.
func TestReplayGuardSweepsExpiredPendingEntries(t *testing.T) {
	t.Parallel()
	g := testGuard(100, ReplayStrict)
	now := time.Now()
	pending, err := g.check([]Credential{{Token: "slow", Expires: now.Add(time.Second)}}, []byte("b"), now)
	if err != nil {
		t.Fatal(err)
	}
	later := now.Add(2 * time.Second)
	for i := range 3 {
		tk, _ := g.check([]Credential{{Token: fmt.Sprint("next", i), Expires: later.Add(time.Minute)}}, []byte("b"), later)
		g.release(tk, true)
	}
	if _, ok := g.lru.Peek(pending.key); ok || g.lru.Len() != 3 {
		t.Fatalf("expired pending entry kept: %d entries", g.lru.Len())
	}
	g.release(pending, true)
	if g.lru.Len() != 3 {
		t.Errorf("a late release brought an entry back: %d entries", g.lru.Len())
	}
	if ev := testutil.ToFloat64(g.evictions); ev != 0 {
		t.Errorf("sweeping an expired entry counted %v evictions", ev)
	}
}

// The modes: a token reused with another body is refused in strict mode
// and, in auto mode, when it has a jti; without one auto accepts it, and
// remembers the second body as a retry too.
func TestReplayGuardModes(t *testing.T) {
	t.Parallel()
	exp := time.Now().Add(time.Minute)
	tests := []struct {
		mode    ReplayDefence
		jti     string
		refused bool
	}{
		{ReplayStrict, "", true},
		{ReplayStrict, "j1", true},
		{ReplayAuto, "j1", true},
		{ReplayAuto, "", false},
	}
	for _, tt := range tests {
		g := testGuard(10, tt.mode)
		creds := []Credential{{Token: "tok", Expires: exp, JTI: tt.jti}}
		first, _ := g.check(creds, []byte("one"), time.Now())
		g.release(first, true)
		second, err := g.check(creds, []byte("two"), time.Now())
		if refused := err != nil; refused != tt.refused {
			t.Errorf("%s jti %q: another body refused %v, want %v", tt.mode, tt.jti, refused, tt.refused)
			continue
		}
		if err != nil {
			continue
		}
		if !second.reused || second.seen {
			t.Errorf("%s: reuse not reported: %+v", tt.mode, second)
		}
		g.release(second, true)
		for _, body := range []string{"one", "two"} {
			if again, err := g.check(creds, []byte(body), time.Now()); err != nil || !again.seen {
				t.Errorf("%s: retry of body %q: seen %v err %v", tt.mode, body, again.seen, err)
			}
		}
	}
}
