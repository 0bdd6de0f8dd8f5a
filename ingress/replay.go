package ingress

import (
	"crypto/sha256"
	"errors"
	"sync"
	"time"
)

// replayGuard binds each Call Automation token to the first body it
// delivered. Call Automation makes a new token per event, and the token does
// not sign the body, so a captured token could otherwise carry a forged body
// until it expires. The same token with the same body is a sender's retry:
// it is answered 200 without queueing again. The same token with another
// body is refused. A token is recorded only once its events are queued, so
// one whose request failed (503) stays usable.
//
// Entries live until the token expires. The guard holds at most max of them;
// when full it evicts the entries closest to expiring, which weakens the
// defence for those tokens only (counted in evicted).
type replayGuard struct {
	max int

	mu      sync.Mutex
	entries map[[16]byte]*replayEntry
	order   []replayKey // insertion order from head on, for expiry sweeps
	head    int
	evicted int
}

type replayEntry struct {
	body    [16]byte
	expires time.Time
	pending int // requests with this token still publishing
	queued  bool
}

type replayKey struct {
	token   [16]byte
	expires time.Time
}

func newReplayGuard(max int) *replayGuard {
	return &replayGuard{max: max, entries: make(map[[16]byte]*replayEntry)}
}

var errTokenReplayed = errors.New("token already delivered a different body")

// check binds the bearer token among creds to body. seen reports that the
// token already delivered this body and its events are queued. Otherwise the
// caller publishes and then calls release with the outcome.
func (g *replayGuard) check(creds []Credential, body []byte) (seen bool, release func(queued bool), err error) {
	var cred Credential
	for _, c := range creds {
		if c.Token != "" {
			cred = c
			break
		}
	}
	if cred.Token == "" || cred.Expires.IsZero() {
		return false, nil, nil
	}
	tok := digest16([]byte(cred.Token))
	b := digest16(body)
	now := time.Now()

	g.mu.Lock()
	defer g.mu.Unlock()
	g.sweep(now)
	e, ok := g.entries[tok]
	switch {
	case ok && e.body != b:
		return false, nil, unauthorized(CauseTokenReplayed, "token already used for a different request; every callback needs its own token", errTokenReplayed)
	case ok && e.queued:
		return true, nil, nil
	case !ok:
		if len(g.entries) >= g.max {
			g.evictOldest()
		}
		e = &replayEntry{body: b, expires: cred.Expires}
		g.entries[tok] = e
		g.order = append(g.order, replayKey{token: tok, expires: cred.Expires})
	}
	e.pending++
	return false, func(queued bool) {
		g.mu.Lock()
		defer g.mu.Unlock()
		e.pending--
		if queued {
			e.queued = true
		} else if e.pending == 0 && !e.queued && g.entries[tok] == e {
			delete(g.entries, tok) // nothing queued: the token stays usable
		}
	}, nil
}

// sweep drops expired entries from the front of the insertion order.
// Tokens are fresh when first seen, so insertion order is close to expiry
// order; an entry out of order is dropped on a later sweep.
func (g *replayGuard) sweep(now time.Time) {
	for g.head < len(g.order) && g.order[g.head].expires.Before(now) {
		k := g.order[g.head]
		if e, ok := g.entries[k.token]; ok && e.expires.Before(now) && e.pending == 0 {
			delete(g.entries, k.token)
		}
		g.head++
	}
	g.compact()
}

// evictOldest makes room by dropping the entries inserted first.
func (g *replayGuard) evictOldest() {
	for g.head < len(g.order) && len(g.entries) >= g.max {
		k := g.order[g.head]
		g.head++
		if e, ok := g.entries[k.token]; ok && e.pending == 0 {
			delete(g.entries, k.token)
			g.evicted++
		}
	}
	g.compact()
}

// compact reclaims the swept prefix of order once it is most of the slice.
func (g *replayGuard) compact() {
	if g.head > 1024 && g.head > len(g.order)/2 {
		g.order = append(g.order[:0], g.order[g.head:]...)
		g.head = 0
	}
}

func digest16(b []byte) [16]byte {
	sum := sha256.Sum256(b)
	var d [16]byte
	copy(d[:], sum[:16])
	return d
}
