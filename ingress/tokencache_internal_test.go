package ingress

import (
	"testing"
	"time"
)

func TestTokenCacheBoundsAndExpiry(t *testing.T) {
	t.Parallel()
	c := newTokenCache(3)
	now := time.Now()
	k := func(b byte) [32]byte { return [32]byte{b} }
	c.put(k(1), now.Add(time.Hour))
	if _, ok := c.get(k(1), now); !ok {
		t.Fatal("fresh entry missed")
	}
	if _, ok := c.get(k(1), now.Add(time.Hour)); ok {
		t.Fatal("entry accepted at its exp")
	}
	if _, ok := c.get(k(1), now); ok {
		t.Fatal("expired entry not dropped")
	}
	for b := byte(10); b < 20; b++ {
		c.put(k(b), now.Add(time.Hour))
		if len(c.entries) > 3 {
			t.Fatalf("cache grew to %d entries, bound 3", len(c.entries))
		}
	}
	if _, ok := c.get(k(19), now); !ok {
		t.Error("the newest entry was evicted")
	}
}

func TestReplayGuardBound(t *testing.T) {
	t.Parallel()
	g := newReplayGuard(100)
	exp := time.Now().Add(time.Minute)
	for i := range 1000 {
		tok := string(rune('a'+i%26)) + string(rune(i))
		_, release, err := g.check([]Credential{{Token: tok, Expires: exp}}, []byte("body"))
		if err != nil {
			t.Fatal(err)
		}
		release(true)
		if len(g.entries) > 100 {
			t.Fatalf("%d entries, bound 100", len(g.entries))
		}
	}
	if g.evicted == 0 {
		t.Error("no evictions counted")
	}
	// Expired entries are swept without eviction.
	g2 := newReplayGuard(100)
	past := time.Now().Add(-time.Second)
	for i := range 50 {
		_, release, _ := g2.check([]Credential{{Token: string(rune(i)), Expires: past}}, []byte("b"))
		release(true)
	}
	g2.check([]Credential{{Token: "fresh", Expires: exp}}, []byte("b"))
	if len(g2.entries) != 1 || g2.evicted != 0 {
		t.Errorf("after a sweep: %d entries, %d evicted; want 1 and 0", len(g2.entries), g2.evicted)
	}
}
