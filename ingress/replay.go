package ingress

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"github.com/prometheus/client_golang/prometheus"
)

// replayGuard binds each Call Automation token to the body it delivered.
// Call Automation makes a new token per event, and the token does not sign
// the body, so a captured token could otherwise carry a forged body until it
// expires. The same token with the same body is a sender's retry: it is
// answered 200 without queueing again. The same token with another body is
// refused (401) in strict mode, and in auto mode when the token has a jti;
// in auto mode without a jti it is accepted, logged at warn with the token's
// digest and counted (cause token_reused), since two genuine events can
// carry byte-identical tokens. A body is recorded as delivered only once its
// events are queued, so a token whose request failed (503) stays usable.
//
// Entries live until the token stops being acceptable (Credential.Expires).
// The guard holds at most max of them in an LRU (hashicorp/golang-lru's
// simplelru, under the guard's own lock so that check-and-record is one
// step): expired entries are dropped from the old end as new ones come in,
// pending or not (an expired token can no longer pass verification); when
// the cache is full of live entries the oldest is evicted, which weakens the
// defence for that token alone and is counted in
// hookbridge_ingress_replay_evictions_total.
type replayGuard struct {
	mode      ReplayDefence
	evictions prometheus.Counter
	log       *slog.Logger

	mu  sync.Mutex
	lru *simplelru.LRU[[16]byte, *replayEntry]
	max int
}

// replayEntry is one token: the bodies it delivered (or is delivering).
type replayEntry struct {
	expires int64 // unix nanoseconds
	jti     bool
	first   bodyState
	more    []bodyState // further bodies of a token without jti, in auto mode
}

type bodyState struct {
	digest  [16]byte
	pending int32 // requests with this body still publishing
	queued  bool
}

// maxBodiesPerToken bounds the bodies remembered for one token reused
// without a jti; later ones are accepted without being remembered.
const maxBodiesPerToken = 8

func newReplayGuard(max int, mode ReplayDefence, evictions prometheus.Counter, log *slog.Logger) *replayGuard {
	lru, _ := simplelru.NewLRU[[16]byte, *replayEntry](max, nil) // max > 0: no error
	return &replayGuard{mode: mode, evictions: evictions, log: log, lru: lru, max: max}
}

var errTokenReplayed = errors.New("token already delivered a different body")

// replayTicket is the outcome of check, handed back to release.
type replayTicket struct {
	// seen: the token already delivered this body and it is queued.
	seen bool
	// reused: the token, without a jti, delivered another body before.
	reused bool

	entry *replayEntry // nil: nothing to release
	key   [16]byte
	body  [16]byte
}

// check binds the bearer token among creds to body. Unless the ticket says
// seen, the caller publishes and then calls release with the outcome.
func (g *replayGuard) check(creds []Credential, body []byte, now time.Time) (replayTicket, error) {
	var cred *Credential
	for i := range creds {
		if creds[i].Token != "" {
			cred = &creds[i]
			break
		}
	}
	if cred == nil || cred.Expires.IsZero() {
		return replayTicket{}, nil
	}
	t := replayTicket{key: digest16([]byte(cred.Token)), body: digest16(body)}
	nowNanos := now.UnixNano()

	g.mu.Lock()
	defer g.mu.Unlock()
	g.sweep(nowNanos)
	e, ok := g.lru.Peek(t.key)
	if ok && e.expires < nowNanos {
		g.lru.Remove(t.key)
		ok = false
	}
	if !ok {
		if g.lru.Len() >= g.max {
			g.lru.RemoveOldest() // live: sweep dropped every expired one before it
			g.evictions.Inc()
		}
		e = &replayEntry{expires: cred.Expires.UnixNano(), jti: cred.JTI != "", first: bodyState{digest: t.body, pending: 1}}
		g.lru.Add(t.key, e)
		t.entry = e
		return t, nil
	}
	if b := e.body(t.body); b != nil {
		if b.queued {
			t.seen = true
			return t, nil
		}
		b.pending++
		t.entry = e
		return t, nil
	}
	if g.mode == ReplayStrict || e.jti {
		return replayTicket{}, unauthorized(CauseTokenReplayed, "token already used for a different request; every callback needs its own token", errTokenReplayed)
	}
	t.reused = true
	g.log.Warn("Call Automation token without jti delivered a second, different body; accepted (--acs-replay-defence auto)",
		"token_digest", hex.EncodeToString(t.key[:8]), "bodies", 2+len(e.more))
	if len(e.more)+1 < maxBodiesPerToken {
		e.more = append(e.more, bodyState{digest: t.body, pending: 1})
		t.entry = e
	}
	return t, nil
}

// release records the outcome of a request check admitted: queued, the
// body is delivered for good; not queued, it is forgotten (and the token
// with it when it delivered nothing else), so the sender's retry is
// admitted again. It is safe on a nil guard and on an empty ticket.
func (g *replayGuard) release(t replayTicket, queued bool) {
	if g == nil || t.entry == nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	e := t.entry
	b := e.body(t.body)
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
	e.forget(t.body)
	if e.empty() {
		if cur, ok := g.lru.Peek(t.key); ok && cur == e {
			g.lru.Remove(t.key) // nothing queued: the token stays usable
		}
	}
}

// sweep drops expired entries from the old end. Tokens are fresh when first
// seen, so insertion order is close to expiry order; an entry that expires
// out of order waits behind a live one until it reaches the old end or the
// cache evicts it.
func (g *replayGuard) sweep(now int64) {
	for {
		_, e, ok := g.lru.GetOldest()
		if !ok || e.expires >= now {
			return
		}
		g.lru.RemoveOldest()
	}
}

// body returns the state of the body with digest d, or nil.
func (e *replayEntry) body(d [16]byte) *bodyState {
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

// forget drops the body with digest d.
func (e *replayEntry) forget(d [16]byte) {
	if e.first.digest == d {
		e.first = bodyState{}
		return
	}
	for i := range e.more {
		if e.more[i].digest == d {
			e.more = append(e.more[:i], e.more[i+1:]...)
			return
		}
	}
}

func (e *replayEntry) empty() bool {
	return e.first.pending == 0 && !e.first.queued && len(e.more) == 0
}

func digest16(b []byte) [16]byte {
	sum := sha256.Sum256(b)
	var d [16]byte
	copy(d[:], sum[:16])
	return d
}
