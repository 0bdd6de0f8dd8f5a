package sqlite

import (
	"cmp"
	"container/heap"
	"context"
	"crypto/sha256"
	"slices"
	"time"
)

// index is a receiving process's view of the queue: for each session, the
// sequence numbers of its messages in order, and which sessions are worth
// asking the database about now. It replaces a secondary index on the queue
// table, whose random inserts made every send write several scattered pages;
// the table itself is append-only, so the view is kept current by a
// sequential scan of the rows added since the last one (refresh).
//
// The view may be stale about what other processes did (a head they
// completed or locked), never about what exists: every row sent is scanned,
// and a receiver checks a session's head in the database, inside its write
// transaction, before handing it out. Heads that turn out gone are dropped,
// locked or delayed ones parked until their lock or delay ends, or until
// another process signals a commit (outside), which may have settled them.
//
// The index also holds the duplicate window: the latest message of each
// MessageID the scan let through (first), and the IDs of messages that left
// the queue (seen, read from dedup_log, which every process appends to when
// a message is completed or dead-lettered). The scan drops a duplicate as
// it finds it, so the send path never looks anything up, and a message's
// window is needed only until every message that could repeat it has been
// scanned, however long those then wait behind their session's head. The
// window knows an ID by a digest of it (idKey), so its maps hold
// no pointers: at a sustained 2,000 events a second a 10-minute window
// holds over a million IDs, which string keys would make about 100 MB that
// the garbage collector walks on every cycle.
//
// All fields are guarded by the queue's writeMu.
type index struct {
	lastSeq int64 // highest queue.seq scanned
	lastLog int64 // highest dedup_log.id read

	keyed   map[string]*session // sessions with a partition key
	keyless map[int64]*session  // messages without one, each a session of its own
	ready   sessionHeap         // sessions whose head may be deliverable
	parked  sessionHeap         // sessions whose head is locked or delayed, by when that ends
	held    map[int64]bool      // heads this process handed out and has not settled

	first map[idKey]seenID // duplicate window: MessageID → the latest message let through
	seen  seenWindow       // duplicate window: MessageIDs that left, with their window's end

	outside, checked uint64 // commits signalled by other processes; the count last acted on
	lastPrune        time.Time

	scan []scanned // refresh's rows, kept for the next refresh
}

type session struct {
	key  string
	seqs []int64 // pending messages, ascending; seqs[0] is the head
	// Where the session is: in ready (at heapIdx), in parked (at heapIdx,
	// until unix ns; other says the lock is another process's), or neither
	// (being worked on).
	where   int
	heapIdx int
	until   int64
	other   bool
}

const (
	nowhere = iota
	inReady
	inParked
)

type seenID struct {
	seq     int64
	expires int64 // unix ns: enqueued time + window
}

// newIndex returns an empty view for a queue whose duplicate window is
// window (0 or negative: off).
func newIndex(window time.Duration) *index {
	return &index{
		keyed:   make(map[string]*session),
		keyless: make(map[int64]*session),
		ready:   sessionHeap{less: byHead, place: inReady},
		parked:  sessionHeap{less: byUntil, place: inParked},
		held:    make(map[int64]bool),
		first:   make(map[idKey]seenID),
		seen:    newSeenWindow(window),
	}
}

// refreshRows bounds the rows one refresh scans, so that a receiver
// starting on a long backlog hands out its first messages at once. A
// partial scan is safe: it covers every message up to some sequence number,
// so each session it knows has its true head, and the sessions it does not
// know yet only have later messages.
const refreshRows = 4096

// refresh adds rows sent since the last refresh (up to refreshRows), after
// the duplicate window's entries appended since. window is the duplicate
// window, 0 when detection is off. A row that repeats a MessageID within
// its window is not added: drop is asked to remove it, and reports whether
// it did (false when another process has claimed it meanwhile, which then
// stays in its session like any other row). It returns how many rows were
// dropped. The caller runs it in a write transaction, and rebuilds the view
// if that transaction rolls back after a drop.
func (x *index) refresh(ctx context.Context, c *conn, window int64, drop func(seq int64) (bool, error)) (dropped int, err error) {
	if window > 0 {
		rows, err := c.query(ctx, `SELECT id, message_id, expires_at FROM dedup_log WHERE id > ? ORDER BY id`, x.lastLog)
		if err != nil {
			return 0, err
		}
		for rows.Next() {
			var id string
			var expires int64
			if err := rows.Scan(&x.lastLog, &id, &expires); err != nil {
				rows.Close()
				return 0, err
			}
			x.seen.add(keyOf(id), expires)
		}
		if err := rows.Close(); err != nil {
			return 0, err
		}
	}
	rows, err := c.query(ctx, sqlScanQueue, x.lastSeq, refreshRows)
	if err != nil {
		return 0, err
	}
	scan := x.scan[:0]
	for rows.Next() {
		var r scanned
		if err := rows.Scan(&r.seq, &r.key, &r.id, &r.enq); err != nil {
			rows.Close()
			return 0, err
		}
		scan = append(scan, r)
	}
	if err := rows.Close(); err != nil {
		return 0, err
	}
	x.scan = scan[:0]
	defer clear(scan) // the strings
	for _, r := range scan {
		if window > 0 {
			k := keyOf(r.id)
			if x.duplicate(k, r.seq, r.enq) {
				gone, err := drop(r.seq)
				if err != nil {
					return dropped, err // lastSeq is short of this row: the next scan reads it again
				}
				if gone {
					dropped++
					x.lastSeq = max(x.lastSeq, r.seq)
					continue
				}
			} else {
				x.first[k] = seenID{seq: r.seq, expires: r.enq + window}
			}
		}
		x.add(r.seq, r.key)
	}
	return dropped, nil
}

// scanned is a row of the queue as refresh reads it.
type scanned struct {
	seq, enq int64
	key, id  string
}

func (x *index) add(seq int64, key string) {
	x.lastSeq = max(x.lastSeq, seq)
	if key == "" {
		s := &session{seqs: []int64{seq}}
		x.keyless[seq] = s
		heap.Push(&x.ready, s)
		return
	}
	s := x.keyed[key]
	if s == nil {
		s = &session{key: key}
		x.keyed[key] = s
	}
	s.seqs = append(s.seqs, seq)
	if len(s.seqs) == 1 && s.where == nowhere {
		heap.Push(&x.ready, s)
	}
}

// wake makes parked sessions ready again: those whose time has come, and,
// when other processes committed since the last call, those parked on
// another process's lock.
func (x *index) wake(now int64) {
	recheckOthers := x.outside != x.checked
	x.checked = x.outside
	if recheckOthers {
		for i := 0; i < x.parked.Len(); {
			if s := x.parked.items[i]; s.other {
				heap.Remove(&x.parked, i)
				heap.Push(&x.ready, s)
				continue
			}
			i++
		}
	}
	for x.parked.Len() > 0 && x.parked.items[0].until <= now {
		heap.Push(&x.ready, heap.Pop(&x.parked))
	}
}

// next takes the ready session with the oldest head, or nil.
func (x *index) next() *session {
	if x.ready.Len() == 0 {
		return nil
	}
	return heap.Pop(&x.ready).(*session)
}

// park puts s aside until the given time (unix ns). other marks a lock held
// by another process, which a commit signalled from outside may end sooner.
func (x *index) park(s *session, until int64, other bool) {
	s.until, s.other = until, other
	heap.Push(&x.parked, s)
}

// pop drops s's head (it was delivered, dead-lettered or found gone) and
// forgets s once it is empty. s must be in neither heap.
func (x *index) pop(s *session) {
	head := s.seqs[0]
	delete(x.held, head)
	s.seqs = s.seqs[1:]
	if len(s.seqs) > 0 {
		return
	}
	if s.key == "" {
		delete(x.keyless, head)
	} else if x.keyed[s.key] == s {
		delete(x.keyed, s.key)
	}
}

// done returns a session taken with next and neither parked nor emptied to
// the ready heap.
func (x *index) done(s *session) {
	if len(s.seqs) == 0 {
		return
	}
	if s.where == nowhere {
		heap.Push(&x.ready, s)
	}
}

// settled is called when this process settled the message seq of session
// key (empty for a keyless message): removed says it left the queue
// (completed or dead-lettered), so the session's next message is due;
// otherwise (abandoned) the head itself may be due again.
func (x *index) settled(key string, seq int64, removed bool) {
	delete(x.held, seq)
	var s *session
	if key == "" {
		s = x.keyless[seq]
	} else {
		s = x.keyed[key]
	}
	if s == nil || s.where != inParked {
		return
	}
	heap.Remove(&x.parked, s.heapIdx)
	if removed && s.seqs[0] == seq {
		x.pop(s)
	}
	x.done(s)
}

// due is when the earliest parked session's lock or delay ends; zero if
// none is parked.
func (x *index) due() time.Time {
	if x.parked.Len() == 0 {
		return time.Time{}
	}
	return time.Unix(0, x.parked.items[0].until)
}

// duplicate reports whether message seq, enqueued at enq with MessageID
// key k, repeats one sent within the window before it: one the scan let
// through earlier, or one that already left the queue.
func (x *index) duplicate(k idKey, seq, enq int64) bool {
	if f, ok := x.first[k]; ok && f.seq < seq && enq < f.expires {
		return true
	}
	return x.seen.repeats(k, enq)
}

// left records that message seq with MessageID id left the queue, its
// window ending at expires.
func (x *index) left(id string, seq, expires int64) {
	k := keyOf(id)
	if f, ok := x.first[k]; ok && f.seq == seq {
		delete(x.first, k)
	}
	x.seen.add(k, expires)
}

// prune forgets window entries that no message yet to be scanned can
// repeat: those whose window ended by cutoff. The IDs let through are
// visited one by one; the IDs that left are dropped a bucket at a time.
func (x *index) prune(cutoff int64) {
	x.seen.prune(cutoff)
	for k, f := range x.first {
		if f.expires <= cutoff {
			delete(x.first, k)
		}
	}
}

// idKey is how the duplicate window knows a MessageID: the first 16 bytes
// of its SHA-256. Two IDs with one key would make the later a false
// duplicate; at 2^-128 a pair that does not happen by chance, and choosing
// an ID to match another's would take breaking SHA-256.
type idKey [16]byte

func keyOf(id string) idKey {
	sum := sha256.Sum256([]byte(id))
	return idKey(sum[:16])
}

// seenWindow holds the IDs of messages that left the queue, each with the
// latest end of its window. A lookup is one map access. For pruning, each
// ID is also listed in a bucket by when its window ends, so dropping the
// IDs whose windows ended visits those alone, a bucket at a time, instead
// of every ID. An ID is kept at most one bucket's width (a sixteenth of the
// window, at least a second) past its window's end.
type seenWindow struct {
	ids     map[idKey]int64 // ID → the latest end of its window (unix ns)
	width   int64           // ns
	buckets []seenBucket    // ascending by end
}

type seenBucket struct {
	end  int64   // no listed ID's window ends after it (unix ns)
	keys []idKey // IDs whose window ends in [end-width, end)
}

const seenBuckets = 16

func newSeenWindow(window time.Duration) seenWindow {
	return seenWindow{ids: make(map[idKey]int64), width: max(int64(window)/seenBuckets, int64(time.Second))}
}

// add records that id's window ends at expires.
func (w *seenWindow) add(k idKey, expires int64) {
	if w.ids[k] >= expires {
		return // listed already, until later
	}
	w.ids[k] = expires
	end := (expires/w.width + 1) * w.width
	i, found := slices.BinarySearchFunc(w.buckets, end, func(b seenBucket, end int64) int { return cmp.Compare(b.end, end) })
	if !found {
		w.buckets = slices.Insert(w.buckets, i, seenBucket{end: end})
	}
	w.buckets[i].keys = append(w.buckets[i].keys, k)
}

// repeats reports whether a message with id enqueued at enq falls in the
// window of one that left. The log records when each window ends, as its
// writer's window made it, not when the message was sent, so it cannot tell
// which came first: a process that scans a message only after a later copy
// of its ID (sent once its window was over, in another session) has left
// takes it for a repeat. hookbridge's MessageIDs are the event's identity,
// and its session is the event's call (or none), so an event's copies share
// a session, where the later waits behind the earlier; copies without one
// are handed out oldest first, and one that waits longer does so after a
// delivery, which the scan's removal leaves alone.
func (w *seenWindow) repeats(k idKey, enq int64) bool {
	return enq < w.ids[k]
}

// prune drops the IDs whose windows all ended by cutoff.
func (w *seenWindow) prune(cutoff int64) {
	n := 0
	for ; n < len(w.buckets) && w.buckets[n].end <= cutoff; n++ {
		for _, k := range w.buckets[n].keys {
			if w.ids[k] <= cutoff { // else listed again in a later bucket
				delete(w.ids, k)
			}
		}
	}
	w.buckets = slices.Delete(w.buckets, 0, n)
}

// sessionHeap is a heap of sessions ordered by less; it keeps each
// session's place (where, heapIdx) up to date. The ready heap orders by the
// head's sequence number (the oldest waiting message goes first), the
// parked heap by when the session may be due.
type sessionHeap struct {
	items []*session
	less  func(a, b *session) bool
	place int // inReady or inParked
}

func byHead(a, b *session) bool  { return a.seqs[0] < b.seqs[0] }
func byUntil(a, b *session) bool { return a.until < b.until }

func (h *sessionHeap) Len() int           { return len(h.items) }
func (h *sessionHeap) Less(i, j int) bool { return h.less(h.items[i], h.items[j]) }
func (h *sessionHeap) Swap(i, j int) {
	h.items[i], h.items[j] = h.items[j], h.items[i]
	h.items[i].heapIdx, h.items[j].heapIdx = i, j
}
func (h *sessionHeap) Push(v any) {
	s := v.(*session)
	s.where, s.heapIdx = h.place, len(h.items)
	h.items = append(h.items, s)
}
func (h *sessionHeap) Pop() any {
	old := h.items
	s := old[len(old)-1]
	old[len(old)-1] = nil
	h.items = old[:len(old)-1]
	s.where = nowhere
	return s
}
