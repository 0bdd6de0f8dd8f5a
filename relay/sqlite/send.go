package sqlite

import (
	"context"
	"fmt"
	"time"

	"github.com/hookbridge/hookbridge/relay"
)

// SendBatch adds msgs to the queue in one transaction and returns after it is
// durable: committed, and the write-ahead log fsynced. Either all are added
// or none. A message whose ID repeats one sent within the duplicate window
// before it is dropped by the first receive that reads it, before any
// delivery (see index). A message with a
// DeadLetterReason goes straight to the dead-letter queue (once per ID within
// the window).
func (q *Queue) SendBatch(ctx context.Context, msgs []relay.Message) error {
	size, direct := 0, 0
	for i := range msgs {
		m := &msgs[i]
		if len(m.Body) > q.cfg.MaxMessageBytes {
			return fmt.Errorf("%w: message %q is %d bytes; the queue takes at most %d (max_message_bytes)",
				relay.ErrMessageTooLarge, m.ID, len(m.Body), q.cfg.MaxMessageBytes)
		}
		if m.ID == "" {
			return fmt.Errorf("sqlite queue: message %d has no ID", i)
		}
		if m.DeadLetterReason != "" {
			direct++
		}
		size += dataSize(m.Subject, m.ContentType, m.Properties, m.Body)
	}
	if err := q.health.fatal(); err != nil {
		return fmt.Errorf("%w: sqlite: %w", relay.ErrUnavailable, err)
	}
	// Every message's stored parts in one allocation.
	arena := make([]byte, 0, size)
	data := make([][]byte, len(msgs))
	for i := range msgs {
		m := &msgs[i]
		start := len(arena)
		var err error
		if arena, err = appendData(arena, m.Subject, m.ContentType, m.Properties, m.Body); err != nil {
			return fmt.Errorf("sqlite queue: message %q: %w", m.ID, err)
		}
		data[i] = arena[start:len(arena):len(arena)]
	}
	now := time.Now().UnixNano()
	var nowArg any = now
	args := make([]any, 0, 4*min(len(msgs)-direct, maxChunk))
	var stored []string // the reasons of the dead letters stored, one each
	gen, err := q.writeTx(ctx, q.send, func() error {
		ctx := context.WithoutCancel(ctx) // see apply: no cancellation hook per statement
		for i := 0; i < len(msgs); {
			args = args[:0]
			for ; i < len(msgs) && len(args) < 4*maxChunk; i++ {
				if msgs[i].DeadLetterReason == "" {
					args = append(args, msgs[i].ID, msgs[i].SessionID, nowArg, data[i])
				}
			}
			for len(args) > 0 {
				n := chunkSize(len(args) / 4)
				if _, err := q.send.exec(ctx, insertSQL(n), args[:4*n]...); err != nil {
					return unavailable("insert", err)
				}
				args = args[4*n:]
			}
		}
		if direct == 0 {
			return nil
		}
		stored = stored[:0]
		for i := range msgs {
			if msgs[i].DeadLetterReason != "" {
				kept, err := q.sendDeadLetter(ctx, &msgs[i], data[i], now)
				if err != nil {
					return err
				}
				if kept {
					stored = append(stored, msgs[i].DeadLetterReason)
				}
			}
		}
		return nil
	})
	if err != nil {
		q.health.failed(err)
		return err
	}
	// Receivers may see the messages before the fsync; that is harmless,
	// since only the acknowledgement promises anything.
	q.notify()
	if err := q.wal.wait(gen); err != nil {
		q.syncFailed(err)
		err = unavailable("sync", err)
		q.health.failed(err)
		return err
	}
	if err := q.wal.gone(false); err != nil {
		q.walGone(err)
		return fmt.Errorf("%w: sqlite: %w", relay.ErrUnavailable, err)
	}
	q.health.succeeded()
	for _, reason := range stored {
		q.metrics.deadLetter(reason, 1)
	}
	q.metrics.duplicate(direct - len(stored))
	return nil
}

// sendDeadLetter stores m straight in the dead-letter queue, unless a
// message with its ID was dead-lettered within the duplicate window (a
// sender's retry, or the same element twice in one request), and reports
// whether it stored it. It takes its sequence number from the queue's, so
// numbers stay unique across both.
func (q *Queue) sendDeadLetter(ctx context.Context, m *relay.Message, data []byte, now int64) (stored bool, err error) {
	db := q.send
	if q.cfg.DuplicateWindow > 0 {
		var n int
		if err := db.row(ctx, `SELECT count(*) FROM deadletter WHERE message_id = ? AND dead_lettered_at > ?`,
			[]any{m.ID, now - q.cfg.DuplicateWindow.Nanoseconds()}, &n); err != nil {
			return false, unavailable("duplicate check", err)
		}
		if n > 0 {
			return false, nil
		}
	}
	res, err := db.exec(ctx, `INSERT INTO queue (message_id, session_id, enqueued_at, data) VALUES (?, ?, ?, ?)`,
		m.ID, m.SessionID, now, data)
	if err != nil {
		return false, unavailable("dead-letter", err)
	}
	seq, err := res.LastInsertId()
	if err != nil {
		return false, unavailable("dead-letter", err)
	}
	if err := moveToDeadLetter(ctx, db, seq, m.DeadLetterReason, m.DeadLetterDescription, now); err != nil {
		return false, err
	}
	return true, nil
}
