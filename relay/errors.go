package relay

import "errors"

// Sentinel errors shared by every backend. Backends wrap them with detail;
// callers test with errors.Is.
var (
	// ErrClosed: the queue, sender, receiver or publisher was closed.
	ErrClosed = errors.New("queue closed")
	// ErrLockLost: the message's lock expired or was taken over, so it can no
	// longer be settled or renewed by this holder; it will be (or was)
	// delivered again.
	ErrLockLost = errors.New("message lock lost")
	// ErrMessageTooLarge: a message can never fit the queue's size limit. No
	// retry can succeed.
	ErrMessageTooLarge = errors.New("message too large for the queue")
	// ErrUnavailable: the queue could not take or hand out messages right now
	// (disk full, database locked, broker unreachable, timeout). A retry may
	// succeed.
	ErrUnavailable = errors.New("queue unavailable")
	// ErrNotFound: no message with the given sequence number or ID.
	ErrNotFound = errors.New("message not found")
)

// NotSentError is a SendBatch failure that left out only the messages it
// names: every other message of the batch was sent. A backend that sends a
// batch whole or not at all never returns it. Err says why (for instance
// ErrMessageTooLarge), and errors.Is sees through to it.
type NotSentError struct {
	// IDs are the MessageIDs of the messages not sent.
	IDs []string
	Err error
}

func (e *NotSentError) Error() string { return e.Err.Error() }

func (e *NotSentError) Unwrap() error { return e.Err }
