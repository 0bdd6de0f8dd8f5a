// Package servicebus is hookbridge's Azure Service Bus backend, built on the
// azservicebus SDK.
//
// Sending: group commit hands SendBatch the messages of concurrent requests;
// they go out as MessageBatches split at the link's size limit (256 KB on
// the Standard tier). A message too large for any batch fails with
// relay.ErrMessageTooLarge (the ingress answers 413). SDK retries are
// bounded (Config.MaxRetries and friends) so a send fails within the
// ingress's deadline rather than hanging. On a session-enabled queue each
// message's SessionID is its partition key, or its own MessageID when it has
// none.
//
// Receiving: on a session-enabled queue (the recommended set-up) a pool
// holds up to Config.MaxSessions sessions and hands out one message per
// session at a time; the session's next message is received only after the
// previous one was settled, which keeps each call's events in order while
// calls are delivered concurrently. The session lock covers the message in
// hand; RenewLock renews it. A lapsed session lock makes settlement fail at
// once with relay.ErrLockLost, and Service Bus gives the session and its
// unsettled message to the next receiver. On a queue without sessions a
// single receiver takes messages in any order.
//
// Abandon with a delay has no Service Bus equivalent: the message is held,
// its lock renewed, for the delay, then abandoned.
//
// Dead letters: ListDeadLetters peeks the $DeadLetterQueue sub-queue;
// TakeDeadLetters receives it in order to lock given sequence numbers, for
// the replay and purge tooling in package consumer.
//
// Package sbemu is an AMQP 1.0 Service Bus emulator in Go, against which
// this package's tests run through the real SDK.
package servicebus
