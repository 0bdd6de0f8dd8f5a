package servicebus

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"
	"github.com/google/uuid"

	"github.com/hookbridge/hookbridge/relay"
)

// takeWait is how long TakeDeadLetters waits for the next dead-lettered
// message before it concludes the rest are gone or locked by someone else:
// 2s, or a quarter of the lock duration if that is shorter, so that what it
// took is still locked when it returns.
func (q *Queue) takeWait() time.Duration { return min(2*time.Second, q.cfg.LockDuration/4) }

// TakeDeadLetters locks the dead-lettered messages with the given sequence
// numbers that are still there. Service Bus cannot lock a message by number,
// so the dead-letter sub-queue is received in order: wanted messages are
// kept, the others held until the scan ends and then abandoned (which
// leaves them in the dead-letter queue, one delivery count higher).
//
// It receives one message per call. A receive asks Service Bus for as many
// messages as it may return and the SDK leaves any unused credit open; a
// message that arrives on that credit after the call and is still in
// flight when the receiver closes stays locked until its lock expires
// (a minute by default) and is "gone or taken by someone else" for every
// other run until then. With one message per receive, credit is left open
// only when a receive found nothing; the scan then takes back, once more,
// what its own give-backs drew in.
func (q *Queue) TakeDeadLetters(ctx context.Context, seqs []int64) ([]*relay.DeadLetterLock, error) {
	r, err := q.getDLQ()
	if err != nil {
		return nil, err
	}
	q.dlqMu.Lock()
	defer q.dlqMu.Unlock()
	want := make(map[int64]bool, len(seqs))
	var last int64
	for _, s := range seqs {
		want[s] = true
		last = max(last, s)
	}
	var (
		taken    []*relay.DeadLetterLock
		held     []*azservicebus.ReceivedMessage
		scanErr  error
		creditUp bool // a receive found nothing: one credit is still open
	)
scan:
	for len(want) > 0 {
		rctx, cancel := context.WithTimeout(ctx, q.takeWait())
		msgs, err := r.ReceiveMessages(rctx, 1, nil)
		cancel()
		switch {
		case err == nil && len(msgs) == 0:
			creditUp = true
			break scan
		case err != nil && ctx.Err() != nil:
			scanErr, creditUp = ctx.Err(), true
			break scan
		case errors.Is(err, context.DeadlineExceeded):
			creditUp = true
			break scan // nothing more to receive
		case err != nil:
			scanErr = mapErr("receive dead letters", err)
			break scan
		}
		m := msgs[0]
		seq := valueOr(m.SequenceNumber, -1)
		if want[seq] {
			taken = append(taken, &relay.DeadLetterLock{DeadLetter: deadLetter(m), LockToken: uuid.UUID(m.LockToken).String(), Backend: m})
			delete(want, seq)
			continue
		}
		held = append(held, m)
		if seq > last {
			break // past every wanted one: the rest are gone
		}
	}
	err = errors.Join(scanErr, q.giveBackDeadLetters(ctx, r, held))
	if creditUp && len(held) > 0 {
		err = errors.Join(err, q.drainStray(ctx, r))
	}
	if err != nil {
		// Nothing half-taken: what was taken goes back too.
		err = errors.Join(err, q.giveBackDeadLetters(ctx, r, messagesOf(taken)))
		return nil, err
	}
	return taken, nil
}

func messagesOf(locks []*relay.DeadLetterLock) []*azservicebus.ReceivedMessage {
	out := make([]*azservicebus.ReceivedMessage, 0, len(locks))
	for _, l := range locks {
		if m, ok := l.Backend.(*azservicebus.ReceivedMessage); ok {
			out = append(out, m)
		}
	}
	return out
}

// giveBackDeadLetters abandons dead-lettered messages this queue holds and
// joins the errors of those it could not give back.
func (q *Queue) giveBackDeadLetters(ctx context.Context, r *azservicebus.Receiver, msgs []*azservicebus.ReceivedMessage) error {
	if len(msgs) == 0 {
		return nil
	}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
	defer cancel()
	var errs []error
	for _, m := range msgs {
		if err := r.AbandonMessage(actx, m, nil); err != nil {
			errs = append(errs, fmt.Errorf("give dead letter %d back (it stays locked until its lock expires): %w", valueOr(m.SequenceNumber, -1), mapErr("abandon", err)))
		}
	}
	return errors.Join(errs...)
}

// drainStray uses up the credit a receive that found nothing left open. The
// messages given back just after it are available again, so one of them is
// delivered on that credit; the SDK releases it, unless the receiver closes
// first. Receiving it (or, if it was released already, the next one) and
// giving it back leaves no credit and nothing locked.
func (q *Queue) drainStray(ctx context.Context, r *azservicebus.Receiver) error {
	rctx, cancel := context.WithTimeout(ctx, q.takeWait())
	msgs, err := r.ReceiveMessages(rctx, 1, nil)
	cancel()
	if err != nil && len(msgs) == 0 {
		return nil // nothing available: nothing drawn in either
	}
	return q.giveBackDeadLetters(ctx, r, msgs)
}

// CompleteDeadLetter removes a taken dead-lettered message.
func (q *Queue) CompleteDeadLetter(ctx context.Context, l *relay.DeadLetterLock) error {
	return q.settleDeadLetter(l, "complete dead letter", func(r *azservicebus.Receiver, m *azservicebus.ReceivedMessage) error {
		return r.CompleteMessage(ctx, m, nil)
	})
}

// ReleaseDeadLetter gives a taken dead-lettered message back.
func (q *Queue) ReleaseDeadLetter(ctx context.Context, l *relay.DeadLetterLock) error {
	return q.settleDeadLetter(l, "release dead letter", func(r *azservicebus.Receiver, m *azservicebus.ReceivedMessage) error {
		return r.AbandonMessage(ctx, m, nil)
	})
}

// settleDeadLetter settles a message TakeDeadLetters locked, on the
// dead-letter receiver that holds its lock; op names the settlement in
// errors.
func (q *Queue) settleDeadLetter(l *relay.DeadLetterLock, op string, settle func(*azservicebus.Receiver, *azservicebus.ReceivedMessage) error) error {
	m, ok := l.Backend.(*azservicebus.ReceivedMessage)
	if !ok {
		return errNotFromServiceBus(fmt.Sprintf("dead letter %d", l.SequenceNumber))
	}
	r, err := q.getDLQ()
	if err != nil {
		return err
	}
	return mapErr(op, settle(r, m))
}
