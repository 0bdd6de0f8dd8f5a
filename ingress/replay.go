package ingress

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"math"
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
// minutes, so it is laid out for the garbage collector: the entries are
// slots in chunked arrays, linked in arrival order by slot number, with
// the index mapping a token's digest to its slot; neither slots nor index
// hold a pointer, so a collection never scans them, and a token costs about
// 110 bytes (TestReplayGuardMemory). A general LRU keeps a linked node per
// entry, which the collector walks on every cycle, at twice the size. A
// removed entry's slot is reused at once; the arrays grow to the most
// tokens held at one time and stay.
type replayGuard struct {
	mode      ReplayDefence
	evictions prometheus.Counter
	log       *slog.Logger

	mu    sync.Mutex
	max   int
	index map[[16]byte]uint32 // token digest → slot
	// slots, allocated a chunk at a time as first needed; used counts those
	// ever handed out, free heads a list of unused ones (linked by next).
	chunks [][]replaySlot
	used   uint32
	free   uint32
	// oldest and newest end the list of entries in arrival order.
	oldest, newest uint32
	// more holds the further bodies of a token reused without a jti (auto
	// mode), by slot; rare, and at most maxBodiesPerToken-1 each.
	more map[uint32][]bodyState
}

// replaySlot is one token: the first body it delivered (or is delivering).
type replaySlot struct {
	key        [16]byte // the token's digest
	first      bodyState
	expires    int64  // unix nanoseconds
	prev, next uint32 // arrival order (toward oldest, toward newest); next links the free list
	gen        uint32 // counts the slot's entries: tells a ticket's entry from a later one
	live       bool
	jti        bool
	more       bool // further bodies are in replayGuard.more
}

type bodyState struct {
	digest  [16]byte
	pending int32 // requests with this body still publishing
	queued  bool
}

// noSlot ends a list of slots.
const noSlot = ^uint32(0)

// replayChunk is the number of slots allocated at a time.
const replayChunk = 4096

// maxBodiesPerToken bounds the bodies remembered for one token reused
// without a jti; later ones are accepted without being remembered.
const maxBodiesPerToken = 8

// MaxReplayCacheSize bounds Config.ReplayCacheSize (slots are numbered in 32
// bits); at about 110 bytes a token it is far above any machine's memory.
const MaxReplayCacheSize = math.MaxInt32

func newReplayGuard(max int, mode ReplayDefence, evictions prometheus.Counter, log *slog.Logger) *replayGuard {
	return &replayGuard{
		mode: mode, evictions: evictions, log: log, max: max,
		index: make(map[[16]byte]uint32),
		free:  noSlot, oldest: noSlot, newest: noSlot,
		more: make(map[uint32][]bodyState),
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
	slot uint32 // the entry's slot,
	gen  uint32 // and its generation there
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
			g.remove(i)
			ok = false
		}
	}
	if !ok {
		if len(g.index) >= g.max {
			g.remove(g.oldest) // live: sweep dropped every expired one before it
			g.evictions.Inc()
		}
		i = g.alloc()
		s = g.slot(i)
		*s = replaySlot{key: t.key, expires: cred.Expires.UnixNano(), jti: cred.JTI != "", live: true,
			first: bodyState{digest: t.body, pending: 1}, gen: s.gen, prev: g.newest, next: noSlot}
		if g.newest != noSlot {
			g.slot(g.newest).next = i
		} else {
			g.oldest = i
		}
		g.newest = i
		g.index[t.key] = i
		t.held, t.slot, t.gen = true, i, s.gen
		return t, nil
	}
	if b := g.body(i, s, t.body); b != nil {
		if b.queued {
			t.seen = true
			return t, nil
		}
		b.pending++
		t.held, t.slot, t.gen = true, i, s.gen
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
		t.held, t.slot, t.gen = true, i, s.gen
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
	s := g.slot(t.slot)
	if !s.live || s.gen != t.gen || s.key != t.key {
		return // the entry expired or was evicted meanwhile
	}
	b := g.body(t.slot, s, t.body)
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
	g.forget(t.slot, s, t.body)
	if s.first.pending == 0 && !s.first.queued && !s.more {
		g.remove(t.slot) // nothing queued: the token stays usable
	}
}

// slot returns slot i.
func (g *replayGuard) slot(i uint32) *replaySlot {
	return &g.chunks[i/replayChunk][i%replayChunk]
}

// alloc returns an unused slot: a freed one, or the next never used,
// allocating its chunk on first use.
func (g *replayGuard) alloc() uint32 {
	if i := g.free; i != noSlot {
		g.free = g.slot(i).next
		return i
	}
	i := g.used
	g.used++
	if int(i/replayChunk) == len(g.chunks) {
		g.chunks = append(g.chunks, make([]replaySlot, replayChunk))
	}
	return i
}

// sweep drops expired entries from the old end. Tokens are fresh when first
// seen, so arrival order is close to expiry order; an entry that expires
// out of order waits behind a live one until it reaches the old end, is
// looked up, or is evicted.
func (g *replayGuard) sweep(now int64) {
	for g.oldest != noSlot && g.slot(g.oldest).expires < now {
		g.remove(g.oldest)
	}
}

// remove drops the entry in slot i and frees the slot.
func (g *replayGuard) remove(i uint32) {
	s := g.slot(i)
	delete(g.index, s.key)
	if s.more {
		delete(g.more, i)
	}
	if s.prev != noSlot {
		g.slot(s.prev).next = s.next
	} else {
		g.oldest = s.next
	}
	if s.next != noSlot {
		g.slot(s.next).prev = s.prev
	} else {
		g.newest = s.prev
	}
	*s = replaySlot{gen: s.gen + 1, next: g.free, prev: noSlot}
	g.free = i
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
