package spool

import "errors"

// ErrFull: the spool holds Config.MaxMessages messages and takes no more
// until the forwarder has drained some. Errors wrapping it also wrap
// relay.ErrUnavailable, so senders get 503 with Retry-After.
var ErrFull = errors.New("spool full")

// ReasonTooLarge is the dead-letter reason, in the spool's own store, of a
// spooled message the primary refuses as too large: no retry can forward
// it. It stays in the store's dead-letter queue for inspection.
const ReasonTooLarge = "MessageTooLarge"
