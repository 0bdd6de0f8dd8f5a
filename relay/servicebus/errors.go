package servicebus

import (
	"fmt"

	"github.com/hookbridge/hookbridge/relay"
)

// The backend's errors wrap the relay sentinels (relay.ErrLockLost,
// relay.ErrUnavailable, relay.ErrMessageTooLarge, relay.ErrClosed); SDK
// errors are mapped by mapErr. The constructors below build the errors
// raised in more than one place.

// errSessionLapsed: op on message seq came after its session's lock
// expired; Service Bus gives the session, with the message, to the next
// receiver.
func errSessionLapsed(op string, seq int64) error {
	return fmt.Errorf("%s message %d: the session lock expired: %w", op, seq, relay.ErrLockLost)
}

// errNotFromServiceBus: a relay value handed to this backend that another
// backend made.
func errNotFromServiceBus(what string) error {
	return fmt.Errorf("servicebus: %s did not come from Service Bus; settle a message with the queue that received it", what)
}
