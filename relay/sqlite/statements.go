package sqlite

import (
	"math/bits"
	"strings"
)

// Statements of the receive and settle path (prepared once per connection,
// see conn).
const (
	sqlScanQueue = `SELECT seq, session_id FROM queue WHERE seq > ? ORDER BY seq LIMIT ?`
	sqlHead      = `SELECT q.message_id, q.session_id, q.enqueued_at, q.data,
		coalesce(s.delivery_count, -1), coalesce(s.locked_until, 0), coalesce(s.visible_at, 0)
		FROM queue AS q LEFT JOIN queue_state AS s ON s.seq = q.seq WHERE q.seq = ?`
	sqlLock = `INSERT INTO queue_state (seq, delivery_count, locked_until, lock_token, visible_at) VALUES (?, ?, ?, ?, 0)
		ON CONFLICT(seq) DO UPDATE SET delivery_count = excluded.delivery_count,
		locked_until = excluded.locked_until, lock_token = excluded.lock_token`
	sqlDedupAppend = `INSERT INTO dedup_log (message_id, seq, expires_at) VALUES (?, ?, ?)`
	sqlDelete      = `DELETE FROM queue WHERE seq = ?`
	sqlDeleteState = `DELETE FROM queue_state WHERE seq = ?`
	sqlHeld        = `SELECT s.delivery_count FROM queue_state AS s WHERE s.seq = ? AND s.lock_token = ? AND s.locked_until > ?`
	sqlAbandon     = `UPDATE queue_state SET locked_until = 0, lock_token = NULL, visible_at = ? WHERE seq = ?`
	sqlRenew       = `UPDATE queue_state SET locked_until = ? WHERE seq = ? AND lock_token = ? AND locked_until > ?`
	sqlMoveToDLQ   = `INSERT INTO deadletter (seq, message_id, session_id, enqueued_at, data, delivery_count, reason, description, dead_lettered_at)
		SELECT q.seq, q.message_id, q.session_id, q.enqueued_at, q.data, coalesce(s.delivery_count, 0), ?, ?, ?
		FROM queue AS q LEFT JOIN queue_state AS s ON s.seq = q.seq WHERE q.seq = ?`
)

// Sends insert with multi-row statements, by row count: every power of two
// up to maxChunk, so few distinct statements are ever prepared. Per-statement
// overhead, not per-row work, dominates small inserts.
const maxChunk = 256

// chunkSize is the largest power of two ≤ min(n, maxChunk): batches are
// split into such chunks so that few distinct statements are ever prepared.
func chunkSize(n int) int {
	c := 1
	for c*2 <= min(n, maxChunk) {
		c *= 2
	}
	return c
}

// insertSQL is the statement inserting n rows; n is a power of two.
func insertSQL(n int) string {
	return insertStatements[bits.TrailingZeros(uint(n))]
}

var insertStatements = func() []string {
	var out []string
	for n := 1; n <= maxChunk; n *= 2 {
		out = append(out, buildInsert(n))
	}
	return out
}()

func buildInsert(n int) string {
	var b strings.Builder
	b.WriteString(`INSERT INTO queue (message_id, session_id, enqueued_at, data) VALUES `)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString("(?,?,?,?)")
	}
	return b.String()
}
