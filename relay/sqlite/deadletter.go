package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/hookbridge/hookbridge/relay"
)

// moveToDeadLetter moves message seq, with its delivery count, to the
// dead-letter queue, in c's transaction.
func moveToDeadLetter(ctx context.Context, c *conn, seq int64, reason, desc string, now int64) error {
	exec := func(query string, args ...any) error {
		if _, err := c.exec(ctx, query, args...); err != nil {
			return unavailable("dead-letter", err)
		}
		return nil
	}
	if err := exec(sqlMoveToDLQ, reason, desc, now, seq); err != nil {
		return err
	}
	return exec(sqlRemove, seq)
}

const deadLetterColumns = `seq, message_id, session_id, enqueued_at, data, delivery_count, reason, description, dead_lettered_at`

func scanDeadLetter(row interface{ Scan(...any) error }) (relay.DeadLetter, error) {
	var d relay.DeadLetter
	var data []byte
	var enq, dl int64
	if err := row.Scan(&d.SequenceNumber, &d.ID, &d.SessionID, &enq, &data, &d.DeliveryCount, &d.Reason, &d.Description, &dl); err != nil {
		return relay.DeadLetter{}, err
	}
	var err error
	if d.Subject, d.ContentType, d.Properties, d.Body, err = decodeData(data); err != nil {
		return relay.DeadLetter{}, fmt.Errorf("dead-lettered message %d: %w", d.SequenceNumber, err)
	}
	d.EnqueuedTime = time.Unix(0, enq)
	d.DeadLetteredTime = time.Unix(0, dl)
	return d, nil
}

// readDeadLetter reads one dead-lettered message through c.
func (q *Queue) readDeadLetter(ctx context.Context, c *conn, seq int64) (relay.DeadLetter, error) {
	s, err := c.stmt(ctx, `SELECT `+deadLetterColumns+` FROM deadletter WHERE seq = ?`)
	if err != nil {
		return relay.DeadLetter{}, err
	}
	d, err := scanDeadLetter(s.QueryRowContext(ctx, seq))
	return d, c.closedErr(err)
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
	defer q.read.hold()()
	rows, err := q.read.query(ctx, `SELECT `+deadLetterColumns+` FROM deadletter WHERE seq > ? ORDER BY seq LIMIT ?`, after, limit)
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
	release := q.read.hold()
	d, err := q.readDeadLetter(ctx, q.read, seq)
	release()
	if errors.Is(err, sql.ErrNoRows) {
		return relay.DeadLetter{}, fmt.Errorf("dead-lettered message %d: %w", seq, relay.ErrNotFound)
	}
	if err != nil {
		return relay.DeadLetter{}, unavailable("read dead letter", err)
	}
	return d, nil
}

// deadLetterLockDuration is how long the dead-letter tooling holds the
// messages it took.
const deadLetterLockDuration = 5 * time.Minute

// TakeDeadLetters locks the dead-lettered messages with the given sequence
// numbers that are still there and not locked by another replay, for
// CompleteDeadLetter or ReleaseDeadLetter.
func (q *Queue) TakeDeadLetters(ctx context.Context, seqs []int64) ([]*relay.DeadLetterLock, error) {
	var out []*relay.DeadLetterLock
	_, err := q.writeTx(ctx, q.settle, func() error {
		out = out[:0]
		now := time.Now()
		for _, seq := range seqs {
			token := uuid.NewString()
			res, err := q.settle.exec(ctx, `UPDATE deadletter SET locked_until = ?, lock_token = ? WHERE seq = ? AND locked_until <= ?`,
				now.Add(deadLetterLockDuration).UnixNano(), token, seq, now.UnixNano())
			if err != nil {
				return unavailable("lock dead letter", err)
			}
			if n, _ := res.RowsAffected(); n == 0 {
				continue // gone, or taken by another replay
			}
			d, err := q.readDeadLetter(ctx, q.settle, seq)
			if err != nil {
				return unavailable("read dead letter", err)
			}
			out = append(out, &relay.DeadLetterLock{DeadLetter: d, LockToken: token})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// CompleteDeadLetter removes a taken dead-lettered message.
func (q *Queue) CompleteDeadLetter(ctx context.Context, l *relay.DeadLetterLock) error {
	return q.settleDeadLetter(ctx, l, `DELETE FROM deadletter WHERE seq = ? AND lock_token = ? AND locked_until > ?`)
}

// ReleaseDeadLetter gives a taken dead-lettered message back untouched.
func (q *Queue) ReleaseDeadLetter(ctx context.Context, l *relay.DeadLetterLock) error {
	return q.settleDeadLetter(ctx, l, `UPDATE deadletter SET locked_until = 0, lock_token = NULL WHERE seq = ? AND lock_token = ? AND locked_until > ?`)
}

func (q *Queue) settleDeadLetter(ctx context.Context, l *relay.DeadLetterLock, stmt string) error {
	_, err := q.writeTx(ctx, q.settle, func() error {
		res, err := q.settle.exec(ctx, stmt, l.SequenceNumber, l.LockToken, time.Now().UnixNano())
		if err != nil {
			return unavailable("settle dead letter", err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("dead-lettered message %d: %w", l.SequenceNumber, relay.ErrLockLost)
		}
		return nil
	})
	return err
}
