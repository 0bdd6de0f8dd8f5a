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

// TakeDeadLetters locks the dead-lettered messages with the given sequence
// numbers that are still there. Service Bus cannot lock a message by number,
// so the dead-letter sub-queue is received in order: wanted messages are
// kept, the others held until the scan ends and then abandoned (which
// leaves them in the dead-letter queue, one delivery count higher).
func (q *Queue) TakeDeadLetters(ctx context.Context, seqs []int64) ([]*relay.DeadLetterLock, error) {
	r, err := q.getDLQ()
	if err != nil {
		return nil, err
	}
	want := make(map[int64]bool, len(seqs))
	var last int64
	for _, s := range seqs {
		want[s] = true
		last = max(last, s)
	}
	var taken []*relay.DeadLetterLock
	var held []*azservicebus.ReceivedMessage
	defer func() {
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		for _, m := range held {
			r.AbandonMessage(actx, m, nil) // back to the dead-letter queue; nothing is lost either way
		}
	}()
	for len(taken) < len(want) {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		msgs, err := r.ReceiveMessages(rctx, 50, nil)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return taken, ctx.Err()
			}
			if errors.Is(err, context.DeadlineExceeded) {
				break // nothing more to receive
			}
			return taken, mapErr("receive dead letters", err)
		}
		passed := false
		for _, m := range msgs {
			seq := int64(-1)
			if m.SequenceNumber != nil {
				seq = *m.SequenceNumber
			}
			if want[seq] {
				d := deadLetter(m)
				taken = append(taken, &relay.DeadLetterLock{DeadLetter: d, LockToken: uuid.UUID(m.LockToken).String(), Backend: m})
				delete(want, seq)
				continue
			}
			held = append(held, m)
			passed = passed || seq > last
		}
		if passed || len(want) == 0 {
			break
		}
	}
	return taken, nil
}

func dlqMessage(l *relay.DeadLetterLock) (*azservicebus.ReceivedMessage, error) {
	m, ok := l.Backend.(*azservicebus.ReceivedMessage)
	if !ok {
		return nil, fmt.Errorf("servicebus: dead letter %d was not taken from Service Bus", l.SequenceNumber)
	}
	return m, nil
}

// CompleteDeadLetter removes a taken dead-lettered message.
func (q *Queue) CompleteDeadLetter(ctx context.Context, l *relay.DeadLetterLock) error {
	m, err := dlqMessage(l)
	if err != nil {
		return err
	}
	r, err := q.getDLQ()
	if err != nil {
		return err
	}
	return mapErr("complete dead letter", r.CompleteMessage(ctx, m, nil))
}

// ReleaseDeadLetter gives a taken dead-lettered message back.
func (q *Queue) ReleaseDeadLetter(ctx context.Context, l *relay.DeadLetterLock) error {
	m, err := dlqMessage(l)
	if err != nil {
		return err
	}
	r, err := q.getDLQ()
	if err != nil {
		return err
	}
	return mapErr("release dead letter", r.AbandonMessage(ctx, m, nil))
}
