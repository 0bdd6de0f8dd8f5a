package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/hookbridge/hookbridge/relay"
)

const deadLetterColumns = `seq, message_id, session_id, subject, content_type, properties, body,
	enqueued_at, delivery_count, reason, description, dead_lettered_at`

func scanDeadLetter(row interface{ Scan(...any) error }) (relay.DeadLetter, error) {
	var d relay.DeadLetter
	var props []byte
	var enq, dl int64
	if err := row.Scan(&d.SequenceNumber, &d.ID, &d.SessionID, &d.Subject, &d.ContentType, &props, &d.Body,
		&enq, &d.DeliveryCount, &d.Reason, &d.Description, &dl); err != nil {
		return relay.DeadLetter{}, err
	}
	var err error
	if d.Properties, err = decodeProperties(props); err != nil {
		return relay.DeadLetter{}, fmt.Errorf("dead-lettered message %d: %w", d.SequenceNumber, err)
	}
	d.EnqueuedTime = time.Unix(0, enq)
	d.DeadLetteredTime = time.Unix(0, dl)
	return d, nil
}

// ListDeadLetters returns up to limit dead-lettered messages with a sequence
// number greater than after, in sequence order.
func (q *Queue) ListDeadLetters(ctx context.Context, after int64, limit int) ([]relay.DeadLetter, error) {
	if q.isClosed() {
		return nil, relay.ErrClosed
	}
	if limit <= 0 {
		limit = 100
	}
	rows, err := q.settle.QueryContext(ctx, `SELECT `+deadLetterColumns+` FROM deadletters WHERE seq > ? ORDER BY seq LIMIT ?`, after, limit)
	if err != nil {
		return nil, unavailable("list dead letters", err)
	}
	defer rows.Close()
	var out []relay.DeadLetter
	for rows.Next() {
		d, err := scanDeadLetter(rows)
		if err != nil {
			return nil, unavailable("list dead letters", err)
		}
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, unavailable("list dead letters", err)
	}
	return out, nil
}

// GetDeadLetter returns the dead-lettered message with sequence number seq,
// or relay.ErrNotFound.
func (q *Queue) GetDeadLetter(ctx context.Context, seq int64) (relay.DeadLetter, error) {
	if q.isClosed() {
		return relay.DeadLetter{}, relay.ErrClosed
	}
	d, err := scanDeadLetter(q.settle.QueryRowContext(ctx, `SELECT `+deadLetterColumns+` FROM deadletters WHERE seq = ?`, seq))
	if errors.Is(err, sql.ErrNoRows) {
		return relay.DeadLetter{}, fmt.Errorf("dead-lettered message %d: %w", seq, relay.ErrNotFound)
	}
	if err != nil {
		return relay.DeadLetter{}, unavailable("read dead letter", err)
	}
	return d, nil
}
