package consumer

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/google/uuid"

	"github.com/hookbridge/hookbridge/relay"
)

// DeadLetterQueue is what the dead-letter tooling needs of a queue: browse
// the dead-letter queue, take (lock) messages from it, complete or release
// them, and send copies to the main queue. Both relay backends provide it.
type DeadLetterQueue interface {
	// ListDeadLetters browses from sequence number after+1, in order.
	ListDeadLetters(ctx context.Context, after int64, limit int) ([]relay.DeadLetter, error)
	// TakeDeadLetters locks those of seqs still in the dead-letter queue.
	TakeDeadLetters(ctx context.Context, seqs []int64) ([]*relay.DeadLetterLock, error)
	CompleteDeadLetter(ctx context.Context, l *relay.DeadLetterLock) error
	ReleaseDeadLetter(ctx context.Context, l *relay.DeadLetterLock) error
	SendBatch(ctx context.Context, msgs []relay.Message) error
}

// DeadLetterFilter selects dead-lettered messages. Zero fields match
// everything.
type DeadLetterFilter struct {
	// IDs match the MessageID or the CloudEvent id.
	IDs []string
	// Type matches the CloudEvent type (the message's Subject).
	Type string
	// Reason matches the dead-letter reason.
	Reason string
	// PartitionKey matches the partition key (SessionID).
	PartitionKey string
	// Since and Until bound when the message was dead-lettered, or, where the
	// backend does not record that (Service Bus), when it was enqueued.
	Since, Until time.Time
	// Limit caps how many messages are selected (0: no cap).
	Limit int
}

// Match reports whether d passes the filter (Limit aside).
func (f DeadLetterFilter) Match(d relay.DeadLetter) bool {
	if len(f.IDs) > 0 {
		eventID, _ := d.Properties[relay.PropID].(string)
		if !slices.Contains(f.IDs, d.ID) && (eventID == "" || !slices.Contains(f.IDs, eventID)) {
			return false
		}
	}
	if f.Type != "" && d.Subject != f.Type {
		return false
	}
	if f.Reason != "" && d.Reason != f.Reason {
		return false
	}
	if f.PartitionKey != "" && d.SessionID != f.PartitionKey {
		return false
	}
	at := d.DeadLetteredTime
	if at.IsZero() {
		at = d.EnqueuedTime
	}
	if !f.Since.IsZero() && at.Before(f.Since) {
		return false
	}
	if !f.Until.IsZero() && !at.Before(f.Until) {
		return false
	}
	return true
}

// ListDeadLetters calls fn with every dead-lettered message that matches f,
// in sequence order, up to f.Limit.
func ListDeadLetters(ctx context.Context, q interface {
	ListDeadLetters(ctx context.Context, after int64, limit int) ([]relay.DeadLetter, error)
}, f DeadLetterFilter, fn func(relay.DeadLetter) error) error {
	var after int64
	n := 0
	for {
		page, err := q.ListDeadLetters(ctx, after, 100)
		if err != nil {
			return fmt.Errorf("list dead letters: %w", err)
		}
		if len(page) == 0 {
			return nil
		}
		for _, d := range page {
			after = max(after, d.SequenceNumber)
			if !f.Match(d) {
				continue
			}
			if err := fn(d); err != nil {
				return err
			}
			n++
			if f.Limit > 0 && n >= f.Limit {
				return nil
			}
		}
	}
}

// ReplayOptions configure Replay and Purge.
type ReplayOptions struct {
	// DryRun reports what would be done and changes nothing.
	DryRun bool
	// Progress, if set, is called after each message with the counts so
	// far and the number selected.
	Progress func(done, total int)
	// ChunkSize is how many messages are taken at once. Default 50.
	ChunkSize int
}

// ReplayResult says what Replay or Purge did.
type ReplayResult struct {
	// Selected are the messages that matched the filter.
	Selected []relay.DeadLetter
	// Done counts messages replayed (or purged).
	Done int
	// Vanished counts selected messages that were gone, or taken by
	// someone else, when their turn came.
	Vanished int
	// Duplicated counts replayed copies whose dead-lettered original could
	// not be removed: the event is in the main queue and still in the
	// dead-letter queue.
	Duplicated int
}

// ReplayCopy is the message Replay sends for a dead-lettered one: the same
// body (so the same CloudEvent, id included), partition key, type and
// properties, a new MessageID (so duplicate detection does not swallow it),
// the replay count incremented and the original MessageID recorded.
func ReplayCopy(d relay.DeadLetter) relay.Message {
	props := maps.Clone(d.Properties)
	if props == nil {
		props = map[string]any{}
	}
	count := int64(0)
	switch v := props[relay.PropReplayCount].(type) {
	case int64:
		count = v
	case int32:
		count = int64(v)
	case float64:
		count = int64(v)
	}
	props[relay.PropReplayCount] = count + 1
	props[relay.PropReplayOf] = d.ID
	delete(props, "DeadLetterReason")
	delete(props, "DeadLetterErrorDescription")
	return relay.Message{
		ID:          uuid.NewString(),
		SessionID:   d.SessionID,
		Subject:     d.Subject,
		ContentType: d.ContentType,
		Body:        d.Body,
		Properties:  props,
	}
}

// Replay re-sends the dead-lettered messages that match f to the main
// queue, in sequence order. Each copy (see ReplayCopy) is sent first and the
// dead-lettered message is completed only after the send was acknowledged:
// a crash in between leaves a duplicate, never a loss.
func Replay(ctx context.Context, q DeadLetterQueue, f DeadLetterFilter, opts ReplayOptions) (ReplayResult, error) {
	return process(ctx, q, f, opts, true)
}

// Purge removes the dead-lettered messages that match f.
func Purge(ctx context.Context, q DeadLetterQueue, f DeadLetterFilter, opts ReplayOptions) (ReplayResult, error) {
	return process(ctx, q, f, opts, false)
}

func process(ctx context.Context, q DeadLetterQueue, f DeadLetterFilter, opts ReplayOptions, replay bool) (ReplayResult, error) {
	var res ReplayResult
	if err := ListDeadLetters(ctx, q, f, func(d relay.DeadLetter) error {
		res.Selected = append(res.Selected, d)
		return nil
	}); err != nil {
		return res, err
	}
	if opts.DryRun || len(res.Selected) == 0 {
		return res, nil
	}
	chunk := opts.ChunkSize
	if chunk <= 0 {
		chunk = 50
	}
	total := len(res.Selected)
	for start := 0; start < total; start += chunk {
		part := res.Selected[start:min(start+chunk, total)]
		seqs := make([]int64, len(part))
		for i, d := range part {
			seqs[i] = d.SequenceNumber
		}
		locks, err := q.TakeDeadLetters(ctx, seqs)
		if err != nil {
			return res, fmt.Errorf("take dead letters: %w", err)
		}
		res.Vanished += len(part) - len(locks)
		slices.SortFunc(locks, func(a, b *relay.DeadLetterLock) int { return int(a.SequenceNumber - b.SequenceNumber) })
		if replay {
			copies := make([]relay.Message, len(locks))
			for i, l := range locks {
				copies[i] = ReplayCopy(l.DeadLetter)
			}
			if err := q.SendBatch(ctx, copies); err != nil {
				release(ctx, q, locks)
				return res, fmt.Errorf("re-send dead letters (nothing was removed from the dead-letter queue): %w", err)
			}
		}
		for _, l := range locks {
			if err := q.CompleteDeadLetter(ctx, l); err != nil {
				if !replay {
					return res, fmt.Errorf("purge dead letter %d: %w", l.SequenceNumber, err)
				}
				res.Duplicated++
			} else {
				res.Done++
			}
			if opts.Progress != nil {
				opts.Progress(res.Done+res.Duplicated, total)
			}
		}
	}
	if res.Duplicated > 0 {
		return res, fmt.Errorf("%d replayed messages are still in the dead-letter queue as well (their removal failed): %w", res.Duplicated, errDuplicated)
	}
	return res, nil
}

var errDuplicated = errors.New("duplicates left in the dead-letter queue")

func release(ctx context.Context, q DeadLetterQueue, locks []*relay.DeadLetterLock) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	for _, l := range locks {
		q.ReleaseDeadLetter(rctx, l)
	}
}
