package ingress

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkReplayGuard measures the replay defence alone, the part of a
// Call Automation request the end-to-end benchmarks leave out because they
// reuse a pool of pre-signed tokens: hashing a real-sized token and body,
// recording the token, and marking it queued, with the cache at its default
// bound so eviction runs too.
func BenchmarkReplayGuard(b *testing.B) {
	g := newReplayGuard(DefaultReplayCacheSize)
	body := make([]byte, 600)
	expires := time.Now().Add(time.Hour)
	var seq atomic.Int64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		tok := make([]byte, 0, 900)
		for pb.Next() {
			i := seq.Add(1)
			tok = fmt.Appendf(tok[:0], "%0900d", i)
			seen, release, err := g.check([]Credential{{Token: string(tok), Expires: expires}}, body)
			if err != nil || seen {
				b.Fatalf("fresh token: seen %v, err %v", seen, err)
			}
			release(true)
		}
	})
}
