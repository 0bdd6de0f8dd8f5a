package ingress

import (
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime"
	rtmetrics "runtime/metrics"
	"slices"
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

// heapAfterGC returns the live heap and the part of it the collector
// scans, after a collection.
func heapAfterGC() (live, scan uint64) {
	runtime.GC()
	s := []rtmetrics.Sample{{Name: "/gc/heap/live:bytes"}, {Name: "/gc/scan/heap:bytes"}}
	rtmetrics.Read(s)
	return s[0].Value.Uint64(), s[1].Value.Uint64()
}

// fillGuard records n fresh tokens, each delivering its body.
func fillGuard(tb testing.TB, g *replayGuard, n, from int, expires time.Time) {
	tok := make([]byte, 0, 64)
	creds := make([]Credential, 1)
	body := []byte("body")
	for i := range n {
		tok = fmt.Appendf(tok[:0], "token-%d", from+i)
		creds[0] = Credential{Token: string(tok), Expires: expires, JTI: "x"}
		t, err := g.check(creds, body, time.Now())
		if err != nil || t.seen {
			tb.Fatalf("fresh token: seen %v, err %v", t.seen, err)
		}
		g.release(t, true)
	}
}

// The guard holds its tokens in about 100 bytes each, and none of it is
// memory the garbage collector scans: under sustained load it holds
// hundreds of thousands of tokens, which a pointer per token would have the
// collector walk on every cycle (and which took 200 bytes each in an LRU).
func TestReplayGuardMemory(t *testing.T) {
	const n = 200_000
	g := testGuard(n, ReplayAuto)
	live0, scan0 := heapAfterGC()
	fillGuard(t, g, n, 0, time.Now().Add(time.Hour))
	live1, scan1 := heapAfterGC()
	runtime.KeepAlive(g)
	perToken := (float64(live1) - float64(live0)) / n
	scanned := (float64(scan1) - float64(scan0)) / n
	t.Logf("%.1f bytes a token, %.2f of them scanned", perToken, scanned)
	if perToken > 140 {
		t.Errorf("%.1f bytes a token, want at most 140", perToken)
	}
	if scanned > 2 {
		t.Errorf("%.2f scanned bytes a token, want none (at most 2: other tests' garbage)", scanned)
	}
}

// BenchmarkReplayGuardFull measures the guard at its default bound: every
// new token evicts the oldest. It reports the bytes a token takes and the
// collector's heap goal at the end under the process's GOGC (hookbridge
// lowers its target to 100 for a live heap this size: run with GOGC=100).
func BenchmarkReplayGuardFull(b *testing.B) {
	g := testGuard(DefaultReplayCacheSize, ReplayAuto)
	live0, _ := heapAfterGC()
	fillGuard(b, g, DefaultReplayCacheSize, 0, time.Now().Add(time.Hour))
	live1, _ := heapAfterGC()
	b.ReportAllocs()
	b.ResetTimer()
	fillGuard(b, g, b.N, DefaultReplayCacheSize, time.Now().Add(time.Hour))
	b.ReportMetric(float64(live1-live0)/DefaultReplayCacheSize, "B/token")
	goal := []rtmetrics.Sample{{Name: "/gc/heap/goal:bytes"}}
	rtmetrics.Read(goal)
	b.ReportMetric(float64(goal[0].Value.Uint64())/(1<<20), "MiB-heap-goal")
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
		if g.len() > 100 {
			t.Fatalf("%d entries, bound 100", g.len())
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
	if n, ev := g2.len(), testutil.ToFloat64(g2.evictions); n != 1 || ev != 0 {
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
	if _, ok := g.index[pending.key]; ok || g.len() != 3 {
		t.Fatalf("expired pending entry kept: %d entries", g.len())
	}
	g.release(pending, true)
	if g.len() != 3 {
		t.Errorf("a late release brought an entry back: %d entries", g.len())
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

// A slot is reused once its entry leaves: a late release of an evicted
// token's ticket leaves the token now in its slot alone, and a token
// forgotten after a failed request gives its room back at once, so failures
// (a sender retrying through an outage, or bodies that do not parse) cannot
// push live tokens out.
func TestReplayGuardSlotReuse(t *testing.T) {
	t.Parallel()
	exp := time.Now().Add(time.Minute)
	cred := func(tok string) []Credential { return []Credential{{Token: tok, Expires: exp, JTI: "j"}} }
	g := testGuard(3, ReplayStrict)
	slow, err := g.check(cred("a"), []byte("body"), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, tok := range []string{"b", "c"} {
		tk, err := g.check(cred(tok), []byte("body"), time.Now())
		if err != nil {
			t.Fatal(err)
		}
		g.release(tk, true)
	}
	d, err := g.check(cred("d"), []byte("body"), time.Now()) // evicts a, takes its slot, still publishing
	if err != nil {
		t.Fatal(err)
	}
	if ev := testutil.ToFloat64(g.evictions); ev != 1 {
		t.Fatalf("%v evictions, want 1", ev)
	}
	g.release(slow, false)
	if _, err := g.check(cred("d"), []byte("forged"), time.Now()); err == nil {
		t.Fatal("d with another body accepted after a's late release")
	}
	g.release(d, true)
	if tk, err := g.check(cred("d"), []byte("body"), time.Now()); err != nil || !tk.seen {
		t.Fatalf("d's retry: seen %v, err %v; want seen", tk.seen, err)
	}

	g = testGuard(3, ReplayStrict)
	victim, _ := g.check(cred("victim"), []byte("body"), time.Now())
	g.release(victim, true)
	for i := range 1000 { // one token whose requests all fail, and a stranger
		tk, _ := g.check(cred("failing"), []byte(fmt.Sprint(i)), time.Now())
		g.release(tk, false)
	}
	other, _ := g.check(cred("other"), []byte("body"), time.Now())
	g.release(other, true)
	if n, ev := g.len(), testutil.ToFloat64(g.evictions); n != 2 || ev != 0 {
		t.Fatalf("%d tokens, %v evictions; want 2 and 0", n, ev)
	}
	if _, err := g.check(cred("victim"), []byte("forged"), time.Now()); err == nil {
		t.Fatal("a live token was pushed out by failed requests: its forged body was accepted")
	}
	retry, err := g.check(cred("failing"), []byte("body"), time.Now())
	if err != nil || retry.seen {
		t.Fatalf("retry of a failed request: seen %v, err %v", retry.seen, err)
	}
}

// The guard's memory follows the most tokens it held at once, not how many
// it has seen.
func TestReplayGuardMemoryFollowsLiveTokens(t *testing.T) {
	t.Parallel()
	g := testGuard(DefaultReplayCacheSize, ReplayAuto)
	start := time.Now()
	for i := range 50 * replayChunk {
		now := start.Add(time.Duration(i) * time.Millisecond)
		tk, err := g.check([]Credential{{Token: fmt.Sprint(i), Expires: now.Add(time.Second), JTI: "j"}}, []byte("b"), now)
		if err != nil {
			t.Fatal(err)
		}
		g.release(tk, true)
	}
	if n, chunks := g.len(), len(g.chunks); n > 1001 || chunks > 1 {
		t.Errorf("%d tokens in %d chunks of %d after %d requests a second long; want about 1,000 in 1",
			n, chunks, replayChunk, 50*replayChunk)
	}
}

// replayModel is the guard's contract written plainly: entries in a slice
// in arrival order.
type replayModel struct {
	max, evictions int
	strict         bool
	entries        []*modelEntry
}

type modelEntry struct {
	key     string
	expires int64
	jti     bool
	first   bodyState
	more    []bodyState
}

func (m *replayModel) find(key string) int {
	for i, e := range m.entries {
		if e.key == key {
			return i
		}
	}
	return -1
}

func (m *replayModel) body(e *modelEntry, d [16]byte) *bodyState {
	if e.first.digest == d && (e.first.pending > 0 || e.first.queued) {
		return &e.first
	}
	for i := range e.more {
		if e.more[i].digest == d {
			return &e.more[i]
		}
	}
	return nil
}

// check returns the entry a ticket holds (nil: none), and seen, reused
// and refused as the guard's check reports them.
func (m *replayModel) check(key string, jti bool, expires int64, d [16]byte, now int64) (held *modelEntry, seen, reused, refused bool) {
	for len(m.entries) > 0 && m.entries[0].expires < now {
		m.entries = m.entries[1:]
	}
	i := m.find(key)
	if i >= 0 && m.entries[i].expires < now {
		m.entries = slices.Delete(m.entries, i, i+1)
		i = -1
	}
	if i < 0 {
		if len(m.entries) >= m.max {
			m.entries = m.entries[1:]
			m.evictions++
		}
		e := &modelEntry{key: key, expires: expires, jti: jti, first: bodyState{digest: d, pending: 1}}
		m.entries = append(m.entries, e)
		return e, false, false, false
	}
	e := m.entries[i]
	if b := m.body(e, d); b != nil {
		if b.queued {
			return nil, true, false, false
		}
		b.pending++
		return e, false, false, false
	}
	if m.strict || e.jti {
		return nil, false, false, true
	}
	if len(e.more)+1 < maxBodiesPerToken {
		e.more = append(e.more, bodyState{digest: d, pending: 1})
		return e, false, true, false
	}
	return nil, false, true, false
}

func (m *replayModel) release(e *modelEntry, d [16]byte, queued bool) {
	if e == nil || !slices.Contains(m.entries, e) {
		return
	}
	b := m.body(e, d)
	if b == nil {
		return
	}
	b.pending--
	if queued {
		b.queued = true
		return
	}
	if b.pending > 0 || b.queued {
		return
	}
	if e.first.digest == d {
		e.first = bodyState{}
	} else {
		e.more = slices.DeleteFunc(e.more, func(x bodyState) bool { return x.digest == d })
	}
	if e.first.pending == 0 && !e.first.queued && len(e.more) == 0 {
		m.entries = slices.DeleteFunc(m.entries, func(x *modelEntry) bool { return x == e })
	}
}

// The guard answers every check as the plain model does, through random
// requests with retries, reused tokens, failed publishes, late releases,
// and expiries in and out of arrival order, at several bounds.
func TestReplayGuardMatchesModel(t *testing.T) {
	t.Parallel()
	for seed := range uint64(60) {
		rng := rand.New(rand.NewPCG(seed, 7))
		max := 1 + rng.IntN(40)
		strict := rng.IntN(3) == 0
		mode := ReplayAuto
		if strict {
			mode = ReplayStrict
		}
		g := testGuard(max, mode)
		m := &replayModel{max: max, strict: strict}
		type open struct {
			tk replayTicket
			e  *modelEntry
		}
		var inFlight []open
		now := int64(1e12)
		for step := range 3000 {
			now += rng.Int64N(int64(time.Millisecond))
			if len(inFlight) > 0 && rng.IntN(2) == 0 {
				j := rng.IntN(len(inFlight))
				o := inFlight[j]
				inFlight = slices.Delete(inFlight, j, j+1)
				queued := rng.IntN(4) > 0
				g.release(o.tk, queued)
				m.release(o.e, o.tk.body, queued)
				continue
			}
			tok := fmt.Sprint("t", rng.IntN(3*max))
			jti := rng.IntN(2) == 0 && tok[len(tok)-1] != '7' // tokens ending in 7 never have one
			expires := now + rng.Int64N(int64(60*time.Millisecond))
			body := []byte(fmt.Sprint("b", rng.IntN(3)))
			tk, err := g.check([]Credential{{Token: tok, Expires: time.Unix(0, expires), JTI: map[bool]string{true: "j"}[jti]}}, body, time.Unix(0, now))
			e, seen, reused, refused := m.check(tok, jti, expires, digest16(body), now)
			if (err != nil) != refused || tk.seen != seen || tk.reused != reused || tk.held != (e != nil) {
				t.Fatalf("seed %d step %d: %s: guard seen %v reused %v held %v err %v; model seen %v reused %v held %v refused %v",
					seed, step, tok, tk.seen, tk.reused, tk.held, err, seen, reused, e != nil, refused)
			}
			if g.len() != len(m.entries) || int(testutil.ToFloat64(g.evictions)) != m.evictions {
				t.Fatalf("seed %d step %d: guard %d tokens, %v evictions; model %d, %d",
					seed, step, g.len(), testutil.ToFloat64(g.evictions), len(m.entries), m.evictions)
			}
			if tk.held {
				inFlight = append(inFlight, open{tk, e})
			}
		}
	}
}

// A ticket names its token too, so a release cannot touch another token
// even if the slot's generation came round to the ticket's again (2^32
// reuses while one request publishes).
func TestReplayGuardStaleTicketAfterGenerationWraps(t *testing.T) {
	t.Parallel()
	exp := time.Now().Add(time.Minute)
	cred := func(tok string) []Credential { return []Credential{{Token: tok, Expires: exp, JTI: "j"}} }
	g := testGuard(1, ReplayStrict)
	stale, _ := g.check(cred("a"), []byte("body"), time.Now())
	b, _ := g.check(cred("b"), []byte("body"), time.Now()) // evicts a, reuses its slot
	if b.slot != stale.slot {
		t.Fatalf("b in slot %d, a was in %d", b.slot, stale.slot)
	}
	g.slot(b.slot).gen = stale.gen // as after 2^32 reuses
	g.release(stale, false)
	if _, err := g.check(cred("b"), []byte("forged"), time.Now()); err == nil {
		t.Fatal("a stale ticket's release removed another token")
	}
}
