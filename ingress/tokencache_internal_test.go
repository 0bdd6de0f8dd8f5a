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
		if c.lru.Len() > 3 {
			t.Fatalf("cache grew to %d entries, bound 3", c.lru.Len())
		}
	}
	if _, ok := c.get(k(19), now); !ok {
		t.Error("the newest entry was evicted")
	}
}
