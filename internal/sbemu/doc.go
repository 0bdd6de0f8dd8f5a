// Package sbemu is a Service Bus emulator: an AMQP 1.0 server, in pure Go,
// that speaks enough of the Service Bus dialect for unmodified Service Bus
// clients to run against it over TCP. Two independent clients are held to
// it in tests: the Go SDK (azservicebus) and Microsoft's JavaScript SDK
// (@azure/service-bus, TestJavaScriptSDK); plain AMQP clients work too.
// Where the SDKs send the same thing differently (a session filter plain
// or described, numbers in different integer types, a reply link named by
// its address or by its link name), the emulator takes every form a
// namespace takes. It imports nothing from hookbridge.
//
// Protocol: the AMQP and SASL headers (ANONYMOUS, PLAIN); open, begin,
// attach, flow (with drain and echo), transfer, disposition, detach, end
// and close, with session windows, link credit and multi-frame transfers
// both ways; heartbeats; CBS put-token on $cbs (SAS signatures checked when
// Config.SharedAccessKey is set); and on <entity>/$management: renew-lock,
// update-disposition, peek-message, receive-by-sequence-number,
// renew-session-lock, get-session-state, set-session-state,
// schedule-message, cancel-scheduled-message and get-message-sessions.
//
// Queue semantics: sequence numbers, enqueued time, peek-lock with lock
// tokens and expiry, delivery counts, complete, abandon, defer,
// dead-letter (with properties to modify), released (not counted as a
// delivery), automatic dead-lettering at the maximum delivery count
// (MaxDeliveryCountExceeded) and on expiry (TTLExpiredException), the
// /$DeadLetterQueue and (empty) /$Transfer/$DeadLetterQueue sub-queues,
// receive-and-delete, batch transfers (format 0x80013700), duplicate
// detection by MessageID, scheduled messages, and sessions (accept a named
// or the next available session, one holder per session, FIFO within a
// session, session state and listing). Messages received through a session
// are locked by the session lock: when the holder closes the session they
// are released at once, uncounted, first in line for the next holder; when
// the session lock expires they are released and counted; a lost connection
// keeps the session locked until it expires.
//
// Layout: conn.go, session.go and link.go move frames (connections,
// sessions, links, credit, transfers); broker.go holds the rules (queues,
// locks, sessions, settlement, dead-lettering, expiry, which message goes
// to which receiver), with send faults applied in one place, Server.accept;
// rpc.go routes $cbs and $management requests and management.go answers
// the latter; message.go renders messages as clients receive them.
//
// Fault injection for tests: RejectSends, DropConnectionOnNextSend,
// WithholdCredit, SetCBS, FailAttach, DetachLinks, CloseConnections,
// ExpireLocks, and the lasting RefuseConnections and ThrottleSends (ended
// one by one or with ClearFaults); Events, OpenConnections, OpenLinks and
// Stats observe it. Package sbemutest starts a server for one test.
//
// Limits: messages live in memory; no TLS, topics, subscriptions,
// forwarding, partitioned entities, transactions or HTTP management API. It
// is a test server, not a broker to deploy. Queues come from Config.Queues,
// CreateQueue, or a Config.json in the format of Microsoft's emulator
// (LoadConfigFile).
package sbemu
