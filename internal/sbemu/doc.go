// Package sbemu is a Service Bus emulator: an AMQP 1.0 server, in pure Go,
// that speaks enough of the Service Bus dialect for the unmodified
// azservicebus SDK (and plain AMQP clients) to run against it over TCP.
//
// Protocol: the AMQP and SASL headers (ANONYMOUS, PLAIN); open, begin,
// attach, flow, transfer, disposition, detach, end and close, with session
// windows, link credit and multi-frame transfers both ways; heartbeats; CBS
// put-token on $cbs (SAS signatures checked when Config.SharedAccessKey is
// set); and on <entity>/$management: renew-lock, update-disposition,
// peek-message, receive-by-sequence-number, renew-session-lock,
// get-session-state, set-session-state, schedule-message and
// cancel-scheduled-message.
//
// Queue semantics: sequence numbers, enqueued time, peek-lock with lock
// tokens and expiry, delivery counts, complete, abandon, defer,
// dead-letter, released (not counted as a delivery), automatic
// dead-lettering at the maximum delivery count (MaxDeliveryCountExceeded)
// and on expiry (TTLExpiredException), the /$DeadLetterQueue sub-queue,
// receive-and-delete, batch transfers (format 0x80013700), duplicate
// detection by MessageID, scheduled messages, and sessions (accept a named
// or the next available session, session locks, one holder per session,
// FIFO within a session, session state).
//
// Fault injection for tests: RejectSends, DropConnectionOnNextSend,
// WithholdCredit, SetCBS, FailAttach, DetachLinks, CloseConnections,
// ExpireLocks, and the lasting RefuseConnections and ThrottleSends (ended
// one by one or with ClearFaults); Events, OpenConnections, OpenLinks and
// Stats observe it.
//
// Limits: messages live in memory; no TLS, topics, subscriptions,
// partitioned entities, transactions or HTTP management API. It is a test
// server, not a broker to deploy. Queues come from Config.Queues,
// CreateQueue, or a Config.json in the format of Microsoft's emulator
// (LoadConfigFile).
package sbemu
