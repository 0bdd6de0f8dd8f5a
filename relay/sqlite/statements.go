package sqlite

import (
	"math/bits"
	"strings"
)

// Statements of the receive and settle path (prepared once per connection,
// see conn). A claim or settlement is one statement that checks and writes
// together, its RowsAffected or RETURNING saying whether it applied.
const (
	sqlScanQueue = `SELECT seq, session_id, message_id, enqueued_at FROM queue WHERE seq > ? ORDER BY seq LIMIT ?`
	// sqlClaim locks a deliverable message (unlocked, visible, under the
	// maximum delivery count) and returns it.
	sqlClaim = `UPDATE queue SET delivery_count = delivery_count + 1, locked_until = ?1, lock_token = ?2
		WHERE seq = ?3 AND locked_until <= ?4 AND visible_at <= ?4 AND delivery_count < ?5
		RETURNING message_id, session_id, enqueued_at, data, delivery_count`
	// sqlState says why a message could not be claimed.
	sqlState    = `SELECT locked_until, visible_at, delivery_count, message_id, enqueued_at FROM queue WHERE seq = ?`
	sqlComplete = `DELETE FROM queue WHERE seq = ? AND lock_token = ? AND locked_until > ?`
	sqlRemove   = `DELETE FROM queue WHERE seq = ?`
	// sqlRemoveUnclaimed drops a duplicate found by a receiver's scan,
	// unless another process has claimed it already.
	sqlRemoveUnclaimed = `DELETE FROM queue WHERE seq = ? AND delivery_count = 0`
	sqlRelease         = `UPDATE queue SET locked_until = 0, lock_token = NULL, visible_at = ? WHERE seq = ? AND lock_token = ? AND locked_until > ? AND delivery_count < ?`
	// sqlGiveBack unlocks a message claimed but never handed out, and takes
	// back the delivery its claim counted.
	sqlGiveBack    = `UPDATE queue SET locked_until = 0, lock_token = NULL, delivery_count = max(delivery_count - 1, 0) WHERE seq = ? AND lock_token = ?`
	sqlHeld        = `SELECT delivery_count FROM queue WHERE seq = ? AND lock_token = ? AND locked_until > ?`
	sqlRenew       = `UPDATE queue SET locked_until = ? WHERE seq = ? AND lock_token = ? AND locked_until > ?`
	sqlDedupAppend = `INSERT INTO dedup_log (message_id, expires_at) VALUES (?, ?)`
	sqlMoveToDLQ   = `INSERT INTO deadletter (seq, message_id, session_id, enqueued_at, data, delivery_count, reason, description, dead_lettered_at)
		SELECT seq, message_id, session_id, enqueued_at, data, delivery_count, ?, ?, ? FROM queue WHERE seq = ?`
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
