// Package consumer is hookbridge's worker runtime: it receives messages from
// a queue, hands each event to a handler (a backend over HTTP, stdout, or Go
// code of your own), and settles the message by the outcome.
//
// Settlement rules:
//   - the handler returns nil → the message is completed;
//   - it returns a *PermanentError (see Permanent) → the message is
//     dead-lettered at once with the error's reason and text;
//   - any other error → the message is abandoned after an exponential backoff
//     with jitter (longer if the error carries a Retry-After), and the queue
//     redelivers it until its maximum delivery count dead-letters it.
//
// The HTTP target maps backend answers to those rules: 2xx delivered; 408,
// 429 and 5xx, timeouts and network errors retried; any other 4xx permanent
// (reason BackendRejected).
//
// Ordering: queues hand out one message per partition key at a time and the
// next only after the previous is settled, so a handler sees a call's events
// one at a time, in order, while different calls are handled concurrently
// (up to Config.Concurrency).
//
// Locks are renewed while a delivery runs; if one is lost anyway the
// delivery's context is cancelled and the message is left to the queue,
// which delivers it again. Run stops on its context's end: it stops
// receiving, lets deliveries in flight finish within Config.ShutdownTimeout,
// then cancels and abandons the rest, settling every message it holds.
package consumer
