package sqlite

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/hookbridge/hookbridge/relay"
)

// Browsing (Summary, Find, Peek) reads through the read connection, never
// inside a write transaction, so it never holds up a send or a claim. The
// queue table has no secondary index (sends are appends), so browsing scans
// it: every statement is bounded by a LIMIT, and summaries look at the
// oldest rows only (relay.SummaryOptions.Scan).

const browseColumns = `seq, message_id, session_id, enqueued_at, data, delivery_count, locked_until, visible_at`

func scanBrowsed(row interface{ Scan(...any) error }, now int64) (relay.BrowsedMessage, error) {
	var m relay.BrowsedMessage
	var data []byte
	var enq, locked, visible int64
	if err := row.Scan(&m.SequenceNumber, &m.ID, &m.SessionID, &enq, &data, &m.DeliveryCount, &locked, &visible); err != nil {
		return relay.BrowsedMessage{}, err
	}
	var err error
	if m.Subject, m.ContentType, m.Properties, m.Body, err = decodeData(data); err != nil {
		return relay.BrowsedMessage{}, fmt.Errorf("message %d: %w", m.SequenceNumber, err)
	}
	m.EnqueuedTime = time.Unix(0, enq)
	switch {
	case locked > now:
		m.State = relay.StateLocked
		m.LockedUntil = time.Unix(0, locked)
	case visible > now:
		m.State = relay.StateDelayed
		m.VisibleAt = time.Unix(0, visible)
	default:
		m.State = relay.StateWaiting
	}
	return m, nil
}

// Summary counts the queue's and the dead-letter queue's messages, splits
// the oldest opts.Scan messages by state, and lists the sessions (calls)
// among them with their oldest message, oldest first.
func (q *Queue) Summary(ctx context.Context, opts relay.SummaryOptions) (relay.QueueSummary, error) {
	if q.isClosed() {
		return relay.QueueSummary{}, relay.ErrClosed
	}
	defer q.read.hold()()
	if opts.Scan <= 0 {
		opts.Scan = relay.DefaultSummaryScan
	}
	if opts.Sessions <= 0 {
		opts.Sessions = relay.DefaultSummarySessions
	}
	s := relay.QueueSummary{KnowsLocks: true}
	if err := q.read.row(ctx, `SELECT (SELECT count(*) FROM queue), (SELECT count(*) FROM deadletter)`, nil, &s.Active, &s.DeadLettered); err != nil {
		return s, unavailable("browse", err)
	}
	now := time.Now().UnixNano()
	if err := q.read.row(ctx, `SELECT count(*), coalesce(sum(locked_until > ?1), 0), coalesce(sum(locked_until <= ?1 AND visible_at > ?1), 0)
		FROM (SELECT locked_until, visible_at FROM queue ORDER BY seq LIMIT ?2)`,
		[]any{now, opts.Scan}, &s.Scanned, &s.Locked, &s.Delayed); err != nil {
		return s, unavailable("browse", err)
	}
	s.Waiting = s.Scanned - s.Locked - s.Delayed
	s.Truncated = s.Active > s.Scanned
	if s.Scanned == 0 {
		return s, nil
	}
	oldest, err := q.browseOne(ctx, `SELECT `+browseColumns+` FROM queue ORDER BY seq LIMIT 1`, nil, now)
	switch {
	case errors.Is(err, relay.ErrNotFound): // emptied meanwhile
	case err != nil:
		return s, err
	default:
		s.Oldest = &oldest
	}

	rows, err := q.read.query(ctx, `SELECT session_id, count(*), min(seq)
		FROM (SELECT seq, session_id FROM queue ORDER BY seq LIMIT ?1)
		WHERE session_id <> '' GROUP BY session_id ORDER BY min(seq) LIMIT ?2`, opts.Scan, opts.Sessions+1)
	if err != nil {
		return s, unavailable("browse", err)
	}
	var heads []int64
	for rows.Next() {
		var b relay.SessionBacklog
		var head int64
		if err := rows.Scan(&b.SessionID, &b.Messages, &head); err != nil {
			rows.Close()
			return s, unavailable("browse", err)
		}
		s.Sessions = append(s.Sessions, b)
		heads = append(heads, head)
	}
	if err := rows.Close(); err != nil {
		return s, unavailable("browse", err)
	}
	if len(s.Sessions) > opts.Sessions {
		s.Sessions, heads, s.MoreSessions = s.Sessions[:opts.Sessions], heads[:opts.Sessions], true
	}
	for i, seq := range heads {
		m, err := q.browseOne(ctx, `SELECT `+browseColumns+` FROM queue WHERE seq = ?`, []any{seq}, now)
		switch {
		case errors.Is(err, relay.ErrNotFound): // settled meanwhile
		case err != nil:
			return s, err
		default:
			s.Sessions[i].Head = &m
		}
	}
	return s, nil
}

// browseOne reads one message; relay.ErrNotFound when there is none.
func (q *Queue) browseOne(ctx context.Context, query string, args []any, now int64) (relay.BrowsedMessage, error) {
	st, err := q.read.stmt(ctx, query)
	if err != nil {
		return relay.BrowsedMessage{}, unavailable("browse", err)
	}
	m, err := scanBrowsed(st.QueryRowContext(ctx, args...), now)
	err = q.read.closedErr(err)
	if errors.Is(err, sql.ErrNoRows) {
		return relay.BrowsedMessage{}, relay.ErrNotFound
	}
	if err != nil {
		return relay.BrowsedMessage{}, unavailable("browse", err)
	}
	return m, nil
}

// Peek returns one message of the queue or of the dead-letter queue, or
// relay.ErrNotFound.
func (q *Queue) Peek(ctx context.Context, ref relay.MessageRef) (relay.BrowsedMessage, error) {
	if q.isClosed() {
		return relay.BrowsedMessage{}, relay.ErrClosed
	}
	if ref.DeadLettered {
		d, err := q.GetDeadLetter(ctx, ref.SequenceNumber)
		if err != nil {
			return relay.BrowsedMessage{}, err
		}
		return relay.FromDeadLetter(d), nil
	}
	release := q.read.hold()
	m, err := q.browseOne(ctx, `SELECT `+browseColumns+` FROM queue WHERE seq = ?`, []any{ref.SequenceNumber}, time.Now().UnixNano())
	release()
	if errors.Is(err, relay.ErrNotFound) {
		return m, fmt.Errorf("message %d (completed, dead-lettered, or never sent): %w", ref.SequenceNumber, relay.ErrNotFound)
	}
	return m, err
}

// eventIDPattern is how a message's CloudEvent id is stored in its data
// blob (see appendData): the property name, the string type, the value.
// Searching the blob for it finds a replayed copy, whose MessageID differs,
// by its event id without decoding every row.
func eventIDPattern(id string) []byte {
	b := appendString(nil, relay.PropID)
	b = append(b, 's')
	return appendString(b, id)
}

// Find returns the messages of the queue and of the dead-letter queue whose
// MessageID or CloudEvent id is query.ID, or whose partition key is
// query.PartitionKey, merged in enqueue (sequence) order: a call's events
// as they stand, each with its state.
func (q *Queue) Find(ctx context.Context, query relay.FindQuery) (relay.FindResult, error) {
	var res relay.FindResult
	if q.isClosed() {
		return res, relay.ErrClosed
	}
	defer q.read.hold()()
	if query.ID == "" && query.PartitionKey == "" {
		return res, nil
	}
	limit := query.Limit
	if limit <= 0 {
		limit = relay.DefaultFindLimit
	}
	var key, id, pattern any // NULL matches nothing
	if query.PartitionKey != "" {
		key = query.PartitionKey
	}
	if query.ID != "" {
		id, pattern = query.ID, eventIDPattern(query.ID)
	}
	now := time.Now().UnixNano()
	match := func(m *relay.BrowsedMessage) bool {
		return (query.PartitionKey != "" && m.SessionID == query.PartitionKey) ||
			(query.ID != "" && (m.ID == query.ID || m.EventID() == query.ID))
	}
	active, more, err := q.findRows(ctx, `SELECT `+browseColumns+` FROM queue
		WHERE session_id = ?1 OR message_id = ?2 OR instr(data, ?3) > 0 ORDER BY seq LIMIT ?4`,
		[]any{key, id, pattern, limit + 1}, limit, func(rows *sql.Rows) (relay.BrowsedMessage, error) { return scanBrowsed(rows, now) })
	if err != nil {
		return res, err
	}
	res.Truncated = more
	dead, more, err := q.findRows(ctx, `SELECT `+deadLetterColumns+` FROM deadletter
		WHERE session_id = ?1 OR message_id = ?2 OR instr(data, ?3) > 0 ORDER BY seq LIMIT ?4`,
		[]any{key, id, pattern, limit + 1}, limit, func(rows *sql.Rows) (relay.BrowsedMessage, error) {
			d, err := scanDeadLetter(rows)
			return relay.FromDeadLetter(d), err
		})
	if err != nil {
		return res, err
	}
	res.Truncated = res.Truncated || more
	for _, m := range append(active, dead...) {
		if match(&m) {
			res.Messages = append(res.Messages, m)
		}
	}
	slices.SortFunc(res.Messages, func(a, b relay.BrowsedMessage) int { return cmp.Compare(a.SequenceNumber, b.SequenceNumber) })
	return res, nil
}

// findRows runs a bounded find statement: at most limit rows, and whether
// there were more.
func (q *Queue) findRows(ctx context.Context, query string, args []any, limit int,
	scan func(*sql.Rows) (relay.BrowsedMessage, error)) ([]relay.BrowsedMessage, bool, error) {
	rows, err := q.read.query(ctx, query, args...)
	if err != nil {
		return nil, false, unavailable("find", err)
	}
	defer rows.Close()
	var out []relay.BrowsedMessage
	for rows.Next() {
		m, err := scan(rows)
		if err != nil {
			return nil, false, unavailable("find", err)
		}
		out = append(out, m)
	}
	if err := rows.Err(); err != nil {
		return nil, false, unavailable("find", err)
	}
	if len(out) > limit {
		return out[:limit], true, nil
	}
	return out, false, nil
}
