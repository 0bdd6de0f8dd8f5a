// Package spool is store-and-forward in front of Service Bus: a
// relay.BatchSender that sends each group commit to the primary queue and,
// when the primary fails or is slow, commits the events to a local durable
// store (the embedded SQLite queue) instead, so that a Service Bus outage,
// throttling or quota never turns an authentic callback into a 503. A
// forwarder (Run) drains the store to the primary.
//
// Guarantees:
//   - SendBatch returns nil only once every message is acknowledged by the
//     primary or durably committed to the store (fsynced).
//   - A send that fails with relay.ErrUnavailable, or has no answer within
//     Config.After (it is then cancelled, its outcome unknown), is committed
//     to the store. relay.ErrMessageTooLarge is returned as is (413): no
//     retry or forwarding could deliver that message.
//   - Order per session (the call's partition key): commits carrying the
//     same session are serialized, so a later commit never reaches the
//     primary while an earlier one of its session may still fail over to
//     the store. While a session may have messages in the store (or on
//     their way to it), its new messages go there too, behind them; the
//     store hands a session's messages out one at a time, in order, and the
//     next is forwarded only after the primary acknowledged the previous.
//     Once a session's messages are all forwarded, its new messages go
//     straight to the primary again.
//   - After a restart with messages left in the store, their sessions are
//     unknown until read: every session's messages go through the store
//     until the messages found at start are forwarded.
//   - Forwarding keeps each MessageID, so a copy that reaches the primary
//     twice (a crash between send and removal, a cancelled direct send that
//     did arrive) is dropped by the primary's duplicate detection, within
//     its window. A primary without duplicate detection may get duplicates.
//   - The store is bounded (Config.MaxMessages): past it, SendBatch fails
//     with ErrFull, wrapping relay.ErrUnavailable (503 with Retry-After).
//   - Messages marked for the dead-letter queue (relay.Message.
//     DeadLetterReason) keep their marking through the store.
//   - A spooled message the primary refuses as too large is set aside in
//     the store's dead-letter queue with reason ReasonTooLarge.
//
// One spool (store file) belongs to one process: the routing state lives in
// memory, so two processes sharing a store could reorder a call's events.
//
// State and Ready report the spool's condition for /readyz (ready while
// spooling, as long as the spool has room); the metrics are
// hookbridge_spool_*.
package spool
