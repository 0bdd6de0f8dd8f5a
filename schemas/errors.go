package schemas

import (
	"errors"
	"fmt"
)

// Sentinel errors of the parsers. Every error a parser returns wraps exactly
// one of them; callers map all of them to "400 Bad Request", since no retry of
// the same body can succeed.
var (
	// ErrMalformed: the body is not JSON of the expected shape (an object or
	// an array of objects).
	ErrMalformed = errors.New("malformed body")
	// ErrInvalidEvent: an event lacks a required attribute or has one of the
	// wrong type or format.
	ErrInvalidEvent = errors.New("invalid event")
	// ErrNoEvents: the body is an empty array.
	ErrNoEvents = errors.New("no events in body")
	// ErrTooManyEvents: the body holds more than MaxEvents events.
	ErrTooManyEvents = errors.New("too many events in body")
)

// ParseError describes what is wrong with one event of a body.
type ParseError struct {
	// Index is the event's position in the body (0 for a single object).
	Index int
	// Attribute is the offending attribute, empty when the event as a whole
	// is wrong.
	Attribute string
	// Reason says what is wrong, in a few words.
	Reason string
	// Err is ErrMalformed or ErrInvalidEvent.
	Err error
}

func (e *ParseError) Error() string {
	if e.Attribute == "" {
		return fmt.Sprintf("event %d: %s", e.Index, e.Reason)
	}
	return fmt.Sprintf("event %d: attribute %q %s", e.Index, e.Attribute, e.Reason)
}

func (e *ParseError) Unwrap() error { return e.Err }

func invalid(index int, attr, reason string) error {
	return &ParseError{Index: index, Attribute: attr, Reason: reason, Err: ErrInvalidEvent}
}
