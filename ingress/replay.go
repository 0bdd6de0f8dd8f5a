package ingress

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"sync"
	"time"

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
// Entries live until the token stops being acceptable (Credential.Expires),
// in arrival order, and the guard holds at most max of them: expired
// entries are dropped from the old end as new ones come in, pending or not
// (an expired token can no longer pass verification); when the guard is
// full of live entries the oldest is evicted, which weakens the defence for
// that token alone and is counted in
// hookbridge_ingress_replay_evictions_total.
//
// At sustained load the guard holds hundreds of thousands of tokens for
// minutes, so it is laid out for the garbage collector: the entries sit in a
// ring of fixed-size slots and the index maps a token's digest to its slot,
// neither holding a pointer, so a collection never scans them, and a token
// costs about 110 bytes (TestReplayGuardMemory). A general LRU keeps a
// linked node per entry, which the collector walks on every cycle, at twice
// the size.
type replayGuard struct {
	mode      ReplayDefence
	evictions prometheus.Counter
	log       *slog.Logger

	mu    sync.Mutex
	max   int
	index map[[16]byte]uint32 // token digest → slot
	// ring holds the entries in arrival order, positions head to tail-1;
	// position p is slot p % max. Its chunks are allocated as first used.
	ring       [][]replaySlot
	head, tail uint64
	// more holds the further bodies of a token reused without a jti (auto
	// mode), by slot; rare, and at most maxBodiesPerToken-1 each.
	more map[uint32][]bodyState
}

// replaySlot is one token: the first body it delivered (or is delivering).
type replaySlot struct {
	key     [16]byte // the token's digest
	first   bodyState
	pos     uint64 // the entry's position: tells a ticket's entry from a later one in its slot
	expires int64  // unix nanoseconds
	jti     bool
	more    bool // further bodies are in replayGuard.more
	gone    bool // removed before reaching the old end
}

type bodyState struct {
	digest  [16]byte
	pending int32 // requests with this body still publishing
	queued  bool
}

// replayChunk is the number of slots allocated at a time.
const replayChunk = 4096

// maxBodiesPerToken bounds the bodies remembered for one token reused
// without a jti; later ones are accepted without being remembered.
const maxBodiesPerToken = 8

// MaxReplayCacheSize bounds Config.ReplayCacheSize (slots are numbered in 32
// bits); at about 100 bytes a token it is far above any machine's memory.
const MaxReplayCacheSize = 1 << 31

func newReplayGuard(max int, mode ReplayDefence, evictions prometheus.Counter, log *slog.Logger) *replayGuard {
	return &replayGuard{
		mode: mode, evictions: evictions, log: log, max: max,
		index: make(map[[16]byte]uint32),
		ring:  make([][]replaySlot, (max+replayChunk-1)/replayChunk),
		more:  make(map[uint32][]bodyState),
	}
}

var errTokenReplayed = errors.New("token already delivered a different body")

// replayTicket is the outcome of check, handed back to release.
type replayTicket struct {
	// seen: the token already delivered this body and it is queued.
	seen bool
	// reused: the token, without a jti, delivered another body before.
	reused bool

	held bool   // false: nothing to release
	pos  uint64 // the entry's position
	key  [16]byte
	body [16]byte
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
	i, ok := g.index[t.key]
	var s *replaySlot
	if ok {
		s = g.slot(i)
		if s.expires < nowNanos {
			g.remove(i, s)
			ok = false
		}
	}
	if !ok {
		if g.tail-g.head >= uint64(g.max) {
			// Full: sweep left a live entry at the old end.
			g.pop()
			g.evictions.Inc()
		}
		i = uint32(g.tail % uint64(g.max))
		s = g.slot(i)
		*s = replaySlot{key: t.key, pos: g.tail, expires: cred.Expires.UnixNano(), jti: cred.JTI != "",
			first: bodyState{digest: t.body, pending: 1}}
		g.index[t.key] = i
		g.tail++
		t.held, t.pos = true, s.pos
		return t, nil
	}
	if b := g.body(i, s, t.body); b != nil {
		if b.queued {
			t.seen = true
			return t, nil
		}
		b.pending++
		t.held, t.pos = true, s.pos
		return t, nil
	}
	if g.mode == ReplayStrict || s.jti {
		return replayTicket{}, unauthorized(CauseTokenReplayed, "token already used for a different request; every callback needs its own token", errTokenReplayed)
	}
	t.reused = true
	more := g.more[i]
	g.log.Warn("Call Automation token without jti delivered a second, different body; accepted (--acs-replay-defence auto)",
		"token_digest", hex.EncodeToString(t.key[:8]), "bodies", 2+len(more))
	if len(more)+1 < maxBodiesPerToken {
		g.more[i] = append(more, bodyState{digest: t.body, pending: 1})
		s.more = true
		t.held, t.pos = true, s.pos
	}
	return t, nil
}

// release records the outcome of a request check admitted: queued, the
// body is delivered for good; not queued, it is forgotten (and the token
// with it when it delivered nothing else), so the sender's retry is
// admitted again. It is safe on a nil guard and on an empty ticket.
func (g *replayGuard) release(t replayTicket, queued bool) {
	if g == nil || !t.held {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	i := uint32(t.pos % uint64(g.max))
	s := g.slot(i)
	if s.pos != t.pos || s.gone || t.pos < g.head {
		return // the entry expired or was evicted meanwhile
	}
	b := g.body(i, s, t.body)
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
	g.forget(i, s, t.body)
	if s.first.pending == 0 && !s.first.queued && !s.more {
		g.remove(i, s) // nothing queued: the token stays usable
	}
}

// slot returns slot i, allocating its chunk on first use.
func (g *replayGuard) slot(i uint32) *replaySlot {
	c := g.ring[i/replayChunk]
	if c == nil {
		c = make([]replaySlot, min(replayChunk, g.max-int(i/replayChunk)*replayChunk))
		g.ring[i/replayChunk] = c
	}
	return &c[i%replayChunk]
}

// sweep drops expired entries from the old end. Tokens are fresh when first
// seen, so arrival order is close to expiry order; an entry that expires
// out of order waits behind a live one until it reaches the old end or is
// evicted.
func (g *replayGuard) sweep(now int64) {
	for g.head < g.tail {
		s := g.slot(uint32(g.head % uint64(g.max)))
		if !s.gone && s.expires >= now {
			return
		}
		g.pop()
	}
}

// pop drops the entry at the old end.
func (g *replayGuard) pop() {
	i := uint32(g.head % uint64(g.max))
	s := g.slot(i)
	g.head++
	if !s.gone {
		g.unindex(i, s)
	}
}

// remove takes the entry in slot i out of the index before it reaches the
// old end; its slot is reclaimed when it does, so until then it counts
// toward the bound (only a request that failed to publish leaves one).
func (g *replayGuard) remove(i uint32, s *replaySlot) {
	g.unindex(i, s)
	s.gone = true
}

func (g *replayGuard) unindex(i uint32, s *replaySlot) {
	delete(g.index, s.key)
	if s.more {
		delete(g.more, i)
		s.more = false
	}
}

// len is the number of tokens held.
func (g *replayGuard) len() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.index)
}

// body returns the state of the body with digest d of the entry in slot i,
// or nil.
func (g *replayGuard) body(i uint32, s *replaySlot, d [16]byte) *bodyState {
	if s.first.digest == d && (s.first.pending > 0 || s.first.queued) {
		return &s.first
	}
	if !s.more {
		return nil
	}
	more := g.more[i]
	for j := range more {
		if more[j].digest == d {
			return &more[j]
		}
	}
	return nil
}

// forget drops the body with digest d of the entry in slot i.
func (g *replayGuard) forget(i uint32, s *replaySlot, d [16]byte) {
	if s.first.digest == d {
		s.first = bodyState{}
		return
	}
	more := g.more[i]
	for j := range more {
		if more[j].digest == d {
			more = append(more[:j], more[j+1:]...)
			break
		}
	}
	if len(more) == 0 {
		delete(g.more, i)
		s.more = false
		return
	}
	g.more[i] = more
}

func digest16(b []byte) [16]byte {
	sum := sha256.Sum256(b)
	var d [16]byte
	copy(d[:], sum[:16])
	return d
}
