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
// none. Service Bus takes no sends to a dead-letter queue, so a message with
// a DeadLetterReason is sent to the queue marked with the application
// properties PropDeadLetterReason and PropDeadLetterDescription, and this
// package's receivers dead-letter it on arrival with that reason, never
// handing it out (logged, and counted by the Collector's
// hookbridge_servicebus_dead_lettered_on_arrival_total).
//
// Receiving: Run runs the queue's background loop, started and stopped by
// its owner (the worker command's errgroup); Receive starts no goroutine.
// On a session-enabled queue (the recommended set-up) Run's pool holds up
// to Config.MaxSessions sessions and hands out one message per session at
// a time; the session's next message is received only after the previous
// one was settled, which keeps each call's events in order while calls are
// delivered concurrently. The session lock covers the message in hand;
// RenewLock renews it. A lapsed session lock makes settlement fail at once
// with relay.ErrLockLost, and Service Bus gives the session and its
// unsettled message to the next receiver. On a queue without sessions a
// single receiver takes messages in any order. Ready reports the loop
// failing for longer than Config.UnreadyAfter.
//
// Stopping keeps order: Service Bus hands a session's next holder the
// messages that are not locked, so a session released with one of its
// messages still locked would deliver the call's later events first. When
// Run's context ends the pool stops receiving, abandons a message it
// received and had not handed out (and one drawn in by a receive the stop
// cut short), cuts an Abandon hold short, and releases each session only
// once the message it handed out was settled or its lock lapsed.
//
// Abandon with a delay has no Service Bus equivalent: the message is held,
// its lock renewed, for the delay, then abandoned; the hold ends at once
// when the queue stops.
//
// Received messages carry Config.MaxDeliveryCount (the queue URL's
// max_delivery; the SDK does not report the queue's setting), so that the
// worker dead-letters a message's last delivery itself. A lock that expires
// on the last delivery (a worker killed, or a lost connection) is
// dead-lettered by Service Bus alone, which no worker sees.
//
// Dead letters: ListDeadLetters peeks the $DeadLetterQueue sub-queue;
// TakeDeadLetters receives it in order, one message at a time, to lock
// given sequence numbers for the replay and purge tooling in package
// consumer, and gives back the messages it passed over. Service Bus's own
// dead-letter properties (DeadLetterReason, DeadLetterErrorDescription)
// become relay.DeadLetter's Reason and Description.
//
// The tests run against internal/sbemu, an AMQP 1.0 Service Bus emulator
// in Go, through the real SDK.
package servicebus
