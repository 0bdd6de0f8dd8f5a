package consumer

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

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

// ReplayResult says what Replay or Purge did. Done + Vanished + Duplicated +
// Failed = len(Selected) after a run that was not interrupted; a run that
// was leaves the rest untouched.
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
	// Failed counts messages that were taken but could not be replayed
	// (the send failed) or purged (the removal failed); they were given
	// back to the dead-letter queue, unchanged.
	Failed int
	// Unreplayable counts selected messages Replay leaves where they are:
	// those dead-lettered as relay.ReasonMalformedEvent, whose body is the
	// element its sender posted, not a normalized event, so a worker could
	// only dead-letter the copy again.
	Unreplayable int
}

// Incomplete reports whether a run did less than it selected: some
// messages vanished, failed or were duplicated, or the run was cut short.
func (r ReplayResult) Incomplete() bool { return r.Done < len(r.Selected) }

// ReplayCopy is the message Replay sends for a dead-lettered one: the same
// body (so the same CloudEvent, id included), partition key, type and
// properties, the replay count incremented and the original MessageID
// recorded, and a MessageID of its own (so duplicate detection does not
// swallow it as a repeat of the original). That MessageID is derived from
// the dead letter (its MessageID and sequence number), so a replay run
// again after a send whose acknowledgement was lost, or after a crash
// before the dead letter was removed, sends a copy that duplicate
// detection drops, not a second delivery; a copy that is dead-lettered in
// turn has a sequence number of its own, so its replay gets a new one.
func ReplayCopy(d relay.DeadLetter) relay.Message {
	props := maps.Clone(d.Properties)
	if props == nil {
		props = map[string]any{}
	}
	props[relay.PropReplayCount] = relay.ReplayCount(d.Properties) + 1
	props[relay.PropReplayOf] = d.ID
	sum := sha256.Sum256(fmt.Appendf(nil, "%s\x00%d", d.ID, d.SequenceNumber))
	return relay.Message{
		ID:          "replay-" + hex.EncodeToString(sum[:]),
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
// a crash in between leaves a duplicate, never a loss. A message taken but
// not replayed is given back to the dead-letter queue; the error joins every
// failure.
func Replay(ctx context.Context, q DeadLetterQueue, f DeadLetterFilter, opts ReplayOptions) (ReplayResult, error) {
	return process(ctx, q, f, opts, true)
}

// Purge removes the dead-lettered messages that match f. A removal that
// fails does not stop the others; the message is given back to the
// dead-letter queue and the error joins every failure.
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
	work := res.Selected
	if replay {
		work = slices.DeleteFunc(slices.Clone(work), func(d relay.DeadLetter) bool { return d.Reason == relay.ReasonMalformedEvent })
		res.Unreplayable = len(res.Selected) - len(work)
	}
	var unreplayable error
	if res.Unreplayable > 0 {
		unreplayable = fmt.Errorf("%d selected messages were dead-lettered as %s and are left in the dead-letter queue: their body is the element its sender posted, not an event a worker can deliver; correct the sender (or post the corrected event to the ingress) and purge them: %w",
			res.Unreplayable, relay.ReasonMalformedEvent, errUnreplayable)
	}
	if opts.DryRun {
		return res, nil
	}
	if len(work) == 0 {
		return res, unreplayable
	}
	chunk := opts.ChunkSize
	if chunk <= 0 {
		chunk = 50
	}
	var errs errorList
	errs.add(unreplayable)
	total := len(work)
	progress := func() {
		if opts.Progress != nil {
			opts.Progress(res.Done+res.Duplicated+res.Failed, total)
		}
	}
	for start := 0; start < total; start += chunk {
		if err := ctx.Err(); err != nil {
			errs.add(fmt.Errorf("interrupted after %d of %d messages: %w", start, total, err))
			break
		}
		part := work[start:min(start+chunk, total)]
		seqs := make([]int64, len(part))
		for i, d := range part {
			seqs[i] = d.SequenceNumber
		}
		locks, err := q.TakeDeadLetters(ctx, seqs)
		if err != nil {
			// Whatever was taken before the failure goes back.
			errs.add(fmt.Errorf("take dead letters: %w", err))
			errs.add(release(ctx, q, locks))
			res.Failed += len(locks)
			break
		}
		res.Vanished += len(part) - len(locks)
		slices.SortFunc(locks, func(a, b *relay.DeadLetterLock) int { return cmp.Compare(a.SequenceNumber, b.SequenceNumber) })
		if replay {
			copies := make([]relay.Message, len(locks))
			for i, l := range locks {
				copies[i] = ReplayCopy(l.DeadLetter)
			}
			// The send is not interrupted by ctx: cut off mid-way it could
			// have queued the copies without saying so, and the originals
			// given back would be replayed twice. ctx stops the run before
			// the next chunk instead.
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
			err := q.SendBatch(sctx, copies)
			cancel()
			if notSent := (*relay.NotSentError)(nil); errors.As(err, &notSent) {
				// Only the named copies were left out (too large, say): their
				// originals go back, and the others', whose copies were
				// sent, are removed as usual, so that a later run does not
				// replay them twice.
				var sent, back []*relay.DeadLetterLock
				for i, l := range locks {
					if slices.Contains(notSent.IDs, copies[i].ID) {
						back = append(back, l)
					} else {
						sent = append(sent, l)
					}
				}
				errs.add(fmt.Errorf("re-send %d of %d dead letters (those stay in the dead-letter queue): %w", len(back), len(locks), err))
				errs.add(release(ctx, q, back))
				res.Failed += len(back)
				locks, err = sent, nil
			}
			if err != nil {
				errs.add(fmt.Errorf("re-send %d dead letters (nothing was removed from the dead-letter queue; run the replay again: a copy the queue took before the failure is then dropped as a duplicate): %w", len(locks), err))
				errs.add(release(ctx, q, locks))
				res.Failed += len(locks)
				progress()
				break
			}
		}
		// Once a replay's copies are sent, removing their originals is worth
		// finishing even if ctx ends: it saves duplicates.
		cctx, cancel := ctx, context.CancelFunc(func() {})
		if replay {
			cctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
		}
		for i, l := range locks {
			if err := cctx.Err(); err != nil {
				errs.add(fmt.Errorf("interrupted: %w", err))
				errs.add(release(ctx, q, locks[i:]))
				res.Failed += len(locks) - i
				break
			}
			if err := q.CompleteDeadLetter(cctx, l); err != nil {
				if replay {
					res.Duplicated++
					errs.add(fmt.Errorf("remove replayed dead letter %d (its copy is in the queue): %w", l.SequenceNumber, err))
				} else {
					res.Failed++
					errs.add(fmt.Errorf("purge dead letter %d: %w", l.SequenceNumber, err))
				}
				// The lock may still be held: give it back so the next run
				// can take the message at once.
				errs.add(release(ctx, q, locks[i:i+1]))
			} else {
				res.Done++
			}
			progress()
		}
		cancel()
	}
	err := errs.err()
	if res.Duplicated > 0 {
		err = errors.Join(fmt.Errorf("%d replayed messages are still in the dead-letter queue as well (their removal failed): %w", res.Duplicated, errDuplicated), err)
	}
	return res, err
}

var (
	errDuplicated   = errors.New("duplicates left in the dead-letter queue")
	errUnreplayable = errors.New("malformed events cannot be replayed")
)

// release gives taken messages back to the dead-letter queue, even when ctx
// has ended, and joins the errors of those it could not give back (their
// locks expire on their own).
func release(ctx context.Context, q DeadLetterQueue, locks []*relay.DeadLetterLock) error {
	if len(locks) == 0 {
		return nil
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
	defer cancel()
	var errs []error
	for _, l := range locks {
		if err := q.ReleaseDeadLetter(rctx, l); err != nil && !errors.Is(err, relay.ErrLockLost) {
			errs = append(errs, fmt.Errorf("give dead letter %d back (it stays locked until its lock expires): %w", l.SequenceNumber, err))
		}
	}
	return errors.Join(errs...)
}

// errorList joins errors, keeping the first few in full so a run over
// thousands of messages against a broken queue stays readable.
type errorList struct {
	errs    []error
	dropped int
}

const maxJoinedErrors = 5

func (l *errorList) add(err error) {
	if err == nil {
		return
	}
	if len(l.errs) < maxJoinedErrors {
		l.errs = append(l.errs, err)
		return
	}
	l.dropped++
}

func (l *errorList) err() error {
	if l.dropped > 0 {
		return errors.Join(append(l.errs, fmt.Errorf("and %d more errors", l.dropped))...)
	}
	return errors.Join(l.errs...)
}
