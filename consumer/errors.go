package consumer

import (
	"errors"
	"fmt"
	"time"
)

// Dead-letter reasons set by the worker.
const (
	// ReasonBackendRejected: the backend answered a 4xx other than 408 and
	// 429, so the same delivery can never succeed.
	ReasonBackendRejected = "BackendRejected"
	// ReasonInvalidMessage: the message body is not a normalized event.
	ReasonInvalidMessage = "InvalidMessage"
	// ReasonHandlerRejected: a Go handler returned a permanent error without
	// a reason of its own.
	ReasonHandlerRejected = "HandlerRejected"
)

// PermanentError marks a delivery failure that no retry can fix: the worker
// dead-letters the message at once, with Reason and the error's text as the
// description.
type PermanentError struct {
	Reason string
	Err    error
}

func (e *PermanentError) Error() string { return e.Err.Error() }
func (e *PermanentError) Unwrap() error { return e.Err }

// Permanent wraps err so the worker dead-letters the message instead of
// retrying it. reason should be a short CamelCase word, for filtering the
// dead-letter queue; empty means ReasonHandlerRejected.
func Permanent(reason string, err error) error {
	if reason == "" {
		reason = ReasonHandlerRejected
	}
	return &PermanentError{Reason: reason, Err: err}
}

// RetryAfterError is a retryable failure with a minimum wait before the next
// attempt, such as an HTTP Retry-After.
type RetryAfterError struct {
	After time.Duration
	Err   error
}

func (e *RetryAfterError) Error() string {
	return fmt.Sprintf("%v (retry after %s)", e.Err, e.After)
}
func (e *RetryAfterError) Unwrap() error { return e.Err }

// RetryAfter wraps err as retryable no sooner than d from now.
func RetryAfter(d time.Duration, err error) error {
	return &RetryAfterError{After: d, Err: err}
}

// IsPermanent reports whether err, or an error it wraps, is a
// *PermanentError, and returns it.
func IsPermanent(err error) (*PermanentError, bool) {
	var p *PermanentError
	ok := errors.As(err, &p)
	return p, ok
}
