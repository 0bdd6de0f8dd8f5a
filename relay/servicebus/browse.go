package servicebus

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"
	"github.com/Azure/go-amqp"

	"github.com/hookbridge/hookbridge/relay"
)

// Browsing (Summary, Find, Peek) uses what Service Bus allows a client
// without Manage rights: peeking (which takes no lock and changes nothing),
// and listing a queue's sessions. Its limits, which the results' Notes
// repeat:
//   - Peek does not say whether a message is locked, so the queue's
//     messages are Active, Deferred or Scheduled, never Locked or Delayed
//     (the worker's retry delay holds a message locked, in the queue).
//   - The SDK peeks a session-enabled queue only through a session receiver,
//     which holds the session's lock while it peeks: Find takes each call's
//     session for the moment of one peek, and cannot peek a call whose
//     session a worker holds (its events are being delivered). Summary
//     lists the sessions (IDs only) and peeks none.
//   - Counts need the management API (Manage rights, HTTPS), which this
//     backend does not use: the dead-letter queue is counted by peeking it,
//     up to a bound.
//   - Service Bus does not record when a message was dead-lettered.

// browseScan bounds how many messages a browse peeks in one queue.
const browseScan = relay.DefaultSummaryScan

// peekPage is how many messages one peek asks for.
const peekPage = 250

// sessionPeekTimeout bounds taking a call's session to peek it.
const sessionPeekTimeout = 5 * time.Second

const noteSessionPeek = "Service Bus lets a client peek a session-enabled queue only while holding a session: the console takes a call's session for the moment of one peek when you find the call, and lists the other calls without peeking them."

const noteNoLockState = "Service Bus's peek does not say whether a message is locked: messages in the queue show as active whether they wait or are being delivered (a delivery waiting out a retry delay is held locked, in the queue)."

// sessionsEnabled reports whether the queue is session-enabled.
func (q *Queue) sessionsEnabled() bool {
	cfg := q.Config()
	return cfg.sessions()
}

func stateOf(sm *azservicebus.ReceivedMessage) relay.MessageState {
	switch sm.State {
	case azservicebus.MessageStateDeferred:
		return relay.StateDeferred
	case azservicebus.MessageStateScheduled:
		return relay.StateScheduled
	}
	return relay.StateActive
}

// partitionKey fills in a message's partition key from its body when it
// carries no session ID: on a queue without sessions the partition key is
// only in the CloudEvent (its partitionkey attribute).
func partitionKey(m *relay.Message) {
	if m.SessionID != "" || len(m.Body) == 0 {
		return
	}
	var ce struct {
		PartitionKey string `json:"partitionkey"`
	}
	if json.Unmarshal(m.Body, &ce) == nil {
		m.SessionID = ce.PartitionKey
	}
}

// browsed is the browse view of a peeked message of the queue.
func browsed(sm *azservicebus.ReceivedMessage) relay.BrowsedMessage {
	m := relay.BrowsedMessage{Message: fromMessage(sm), State: stateOf(sm), DeliveryCount: int(sm.DeliveryCount),
		SequenceNumber: valueOr(sm.SequenceNumber, 0), EnqueuedTime: valueOr(sm.EnqueuedTime, time.Time{})}
	partitionKey(&m.Message)
	if sm.ScheduledEnqueueTime != nil && m.State == relay.StateScheduled {
		m.VisibleAt = *sm.ScheduledEnqueueTime
	}
	return m
}

// peeker is what peeks: a Receiver or a SessionReceiver.
type peeker interface {
	PeekMessages(ctx context.Context, maxMessageCount int, options *azservicebus.PeekMessagesOptions) ([]*azservicebus.ReceivedMessage, error)
}

// peekAll peeks from sequence number 1 on, calling fn with each message,
// until the queue ends, fn returns false or most messages were seen.
func peekAll(ctx context.Context, p peeker, most int, fn func(*azservicebus.ReceivedMessage) bool) (seen int, err error) {
	from := int64(1)
	for seen < most {
		msgs, err := p.PeekMessages(ctx, min(peekPage, most-seen), &azservicebus.PeekMessagesOptions{FromSequenceNumber: &from})
		if err != nil {
			return seen, mapErr("peek", err)
		}
		if len(msgs) == 0 {
			return seen, nil
		}
		for _, sm := range msgs {
			seen++
			if sm.SequenceNumber != nil {
				from = max(from, *sm.SequenceNumber+1)
			}
			if !fn(sm) {
				return seen, nil
			}
		}
	}
	return seen, nil
}

// withQueueReceiver runs fn with a fresh receiver of the queue (not
// session-enabled), closed afterwards.
func (q *Queue) withQueueReceiver(ctx context.Context, fn func(*azservicebus.Receiver) error) error {
	r, err := q.client.NewReceiverForQueue(q.Config().Queue, nil)
	if err != nil {
		return mapErr("open receiver", err)
	}
	defer r.Close(context.WithoutCancel(ctx))
	return fn(r)
}

// errSessionHeld says a session is locked by another receiver: a worker is
// delivering its events.
var errSessionHeld = errors.New("the session is held by a worker")

// withSession takes session id's lock for the moment of fn, then releases
// it. A session another receiver holds fails with errSessionHeld.
func (q *Queue) withSession(ctx context.Context, id string, fn func(*azservicebus.SessionReceiver) error) error {
	actx, cancel := context.WithTimeout(ctx, sessionPeekTimeout)
	defer cancel()
	r, err := q.client.AcceptSessionForQueue(actx, q.Config().Queue, id, nil)
	if err != nil {
		var ae *amqp.Error
		if errors.As(err, &ae) && ae.Condition == "com.microsoft:session-cannot-be-locked" {
			return errSessionHeld
		}
		return mapErr("take session to peek it", err)
	}
	defer r.Close(context.WithoutCancel(ctx))
	return fn(r)
}

// Summary peeks the dead-letter queue (up to opts.Scan messages) to count
// it, and the queue: on a queue without sessions, up to opts.Scan messages,
// by state, with the oldest; on a session-enabled queue it lists the
// sessions (calls) with messages, peeking none (see the package's notes).
func (q *Queue) Summary(ctx context.Context, opts relay.SummaryOptions) (relay.QueueSummary, error) {
	if opts.Scan <= 0 {
		opts.Scan = relay.DefaultSummaryScan
	}
	if opts.Sessions <= 0 {
		opts.Sessions = relay.DefaultSummarySessions
	}
	s := relay.QueueSummary{Active: -1, DeadLettered: -1}
	var dead int64
	after := int64(0)
	for dead < int64(opts.Scan) {
		page, err := q.ListDeadLetters(ctx, after, min(peekPage, opts.Scan-int(dead)))
		if err != nil {
			return s, err
		}
		if len(page) == 0 {
			s.DeadLettered = dead
			break
		}
		dead += int64(len(page))
		after = page[len(page)-1].SequenceNumber
	}
	if s.DeadLettered < 0 {
		s.Notes = append(s.Notes, fmt.Sprintf("The dead-letter queue holds more than %d messages; Service Bus counts need its management API, which the console does not use.", opts.Scan))
	}

	if q.sessionsEnabled() {
		s.Notes = append(s.Notes, noteSessionPeek)
		pager := q.client.NewListSessionsForQueuePager(q.Config().Queue, nil)
		for pager.More() && len(s.Sessions) <= opts.Sessions {
			page, err := pager.NextPage(ctx)
			if err != nil {
				return s, mapErr("list sessions", err)
			}
			for _, id := range page.Sessions {
				s.Sessions = append(s.Sessions, relay.SessionBacklog{SessionID: id, Messages: -1})
			}
		}
		if len(s.Sessions) > opts.Sessions {
			s.Sessions, s.MoreSessions = s.Sessions[:opts.Sessions], true
		}
		return s, nil
	}

	s.Notes = append(s.Notes, noteNoLockState)
	err := q.withQueueReceiver(ctx, func(r *azservicebus.Receiver) error {
		n, err := peekAll(ctx, r, opts.Scan, func(sm *azservicebus.ReceivedMessage) bool {
			m := browsed(sm)
			if s.Oldest == nil {
				s.Oldest = &m
			}
			switch m.State {
			case relay.StateActive:
				s.Waiting++
			default:
				s.Delayed++
			}
			return true
		})
		s.Scanned = int64(n)
		s.Truncated = n == opts.Scan
		if !s.Truncated {
			s.Active = int64(n)
		}
		return err
	})
	return s, err
}

// Find peeks for the messages whose MessageID or CloudEvent id is query.ID
// or whose partition key is query.PartitionKey: in the dead-letter queue,
// and in the queue (on a session-enabled queue, in the sessions of the
// partition key and of the dead-lettered messages found; see the package's
// notes). At most browseScan messages are peeked in each queue.
func (q *Queue) Find(ctx context.Context, query relay.FindQuery) (relay.FindResult, error) {
	var res relay.FindResult
	if query.ID == "" && query.PartitionKey == "" {
		return res, nil
	}
	limit := query.Limit
	if limit <= 0 {
		limit = relay.DefaultFindLimit
	}
	match := func(m *relay.BrowsedMessage) bool {
		return (query.PartitionKey != "" && m.SessionID == query.PartitionKey) ||
			(query.ID != "" && (m.ID == query.ID || m.EventID() == query.ID))
	}
	var dead, active []relay.BrowsedMessage
	// The dead-letter queue.
	after, seen := int64(0), 0
	for seen < browseScan && len(dead) <= limit {
		page, err := q.ListDeadLetters(ctx, after, peekPage)
		if err != nil {
			return res, err
		}
		if len(page) == 0 {
			break
		}
		for _, d := range page {
			seen++
			after = max(after, d.SequenceNumber)
			m := relay.FromDeadLetter(d)
			partitionKey(&m.Message)
			if match(&m) {
				dead = append(dead, m)
			}
		}
	}
	if seen >= browseScan {
		res.Notes = append(res.Notes, fmt.Sprintf("Only the first %d dead-lettered messages were searched.", browseScan))
	}

	if !q.sessionsEnabled() {
		err := q.withQueueReceiver(ctx, func(r *azservicebus.Receiver) error {
			n, err := peekAll(ctx, r, browseScan, func(sm *azservicebus.ReceivedMessage) bool {
				if m := browsed(sm); match(&m) {
					active = append(active, m)
				}
				return len(active) <= limit
			})
			if n >= browseScan {
				res.Notes = append(res.Notes, fmt.Sprintf("Only the first %d messages of the queue were searched.", browseScan))
			}
			return err
		})
		if err != nil {
			return res, err
		}
		res.Notes = append(res.Notes, noteNoLockState)
	} else {
		// The calls to peek: the partition key asked for, and the calls of
		// the dead letters an ID matched.
		var keys []string
		if query.PartitionKey != "" {
			keys = append(keys, query.PartitionKey)
		}
		for _, d := range dead {
			if d.SessionID != "" && !slices.Contains(keys, d.SessionID) && len(keys) < 5 {
				keys = append(keys, d.SessionID)
			}
		}
		for _, key := range keys {
			err := q.withSession(ctx, key, func(r *azservicebus.SessionReceiver) error {
				_, err := peekAll(ctx, r, limit+1, func(sm *azservicebus.ReceivedMessage) bool {
					if m := browsed(sm); match(&m) || m.SessionID == key {
						active = append(active, m)
					}
					return len(active) <= limit
				})
				return err
			})
			switch {
			case errors.Is(err, errSessionHeld):
				res.Notes = append(res.Notes, fmt.Sprintf("Call %s is being delivered: a worker holds its session, and Service Bus lets only the holder peek it. Its events in the queue are not shown; try again in a moment.", key))
			case err != nil:
				return res, err
			}
		}
		if query.ID != "" {
			res.Notes = append(res.Notes, "On a session-enabled Service Bus queue, events still in the queue are found by their call's correlation ID; an event or message ID finds dead-lettered events (and then their call).")
		}
		res.Notes = append(res.Notes, noteSessionPeek)
	}
	if len(active) > limit {
		active, res.Truncated = active[:limit], true
	}
	if len(dead) > limit {
		dead, res.Truncated = dead[:limit], true
	}
	res.Messages = append(active, dead...)
	slices.SortStableFunc(res.Messages, func(a, b relay.BrowsedMessage) int {
		return cmp.Or(a.EnqueuedTime.Compare(b.EnqueuedTime), cmp.Compare(a.SequenceNumber, b.SequenceNumber))
	})
	return res, nil
}

// Peek returns one message by sequence number: of the dead-letter queue,
// or of the queue (on a session-enabled queue ref.SessionID names the call
// whose session is taken for the moment of the peek).
func (q *Queue) Peek(ctx context.Context, ref relay.MessageRef) (relay.BrowsedMessage, error) {
	notFound := fmt.Errorf("message %d: %w", ref.SequenceNumber, relay.ErrNotFound)
	if ref.DeadLettered {
		page, err := q.ListDeadLetters(ctx, ref.SequenceNumber-1, 1)
		if err != nil {
			return relay.BrowsedMessage{}, err
		}
		if len(page) == 0 || page[0].SequenceNumber != ref.SequenceNumber {
			return relay.BrowsedMessage{}, notFound
		}
		return relay.FromDeadLetter(page[0]), nil
	}
	var out *relay.BrowsedMessage
	peekOne := func(p peeker) error {
		from := ref.SequenceNumber
		msgs, err := p.PeekMessages(ctx, 1, &azservicebus.PeekMessagesOptions{FromSequenceNumber: &from})
		if err != nil {
			return mapErr("peek", err)
		}
		if len(msgs) == 1 && msgs[0].SequenceNumber != nil && *msgs[0].SequenceNumber == ref.SequenceNumber {
			m := browsed(msgs[0])
			out = &m
		}
		return nil
	}
	var err error
	switch {
	case !q.sessionsEnabled():
		err = q.withQueueReceiver(ctx, func(r *azservicebus.Receiver) error { return peekOne(r) })
	case ref.SessionID == "":
		return relay.BrowsedMessage{}, fmt.Errorf("message %d: a session-enabled Service Bus queue is peeked through the message's session; find its call first: %w", ref.SequenceNumber, relay.ErrNotFound)
	default:
		err = q.withSession(ctx, ref.SessionID, func(r *azservicebus.SessionReceiver) error { return peekOne(r) })
		if errors.Is(err, errSessionHeld) {
			return relay.BrowsedMessage{}, fmt.Errorf("message %d: a worker holds call %s's session (its events are being delivered), and Service Bus lets only the holder peek it; try again in a moment: %w",
				ref.SequenceNumber, ref.SessionID, relay.ErrUnavailable)
		}
	}
	if err != nil {
		return relay.BrowsedMessage{}, err
	}
	if out == nil {
		return relay.BrowsedMessage{}, notFound
	}
	return *out, nil
}
