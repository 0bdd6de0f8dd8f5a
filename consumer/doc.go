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
//     redelivers it; on the last delivery the queue allows
//     (relay.Received.MaxDeliveryCount) the worker dead-letters it itself,
//     with reason relay.ReasonMaxDelivery and the error as description, so
//     that it is counted and logged rather than dead-lettered unseen;
//   - a delivery still running when the shutdown grace period ends is not a
//     failure: it is abandoned with no delay, for another worker to take.
//
// Every dead-lettering is logged (reason, event_id, message_id) and counted
// in hookbridge_worker_deliveries_total{outcome="dead_lettered"}. A delivery
// that outlasts Config.DeliveryTimeout is logged with cause
// delivery_timeout.
//
// The HTTP target maps backend answers to those rules: 2xx delivered; 408,
// 429 and 5xx, timeouts and network errors retried; any other 4xx, and any
// 3xx, permanent (reason BackendRejected). Redirects are never followed: a
// 3xx means the delivery URL is wrong, and following it would send the
// event, or a bodiless GET, where nobody configured.
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
//
// Tracing (Config.TracerProvider and HTTPConfig.TracerProvider; off when
// nil): each delivery is a consumer span "process <queue>" continuing the
// trace its message carries (relay.RemoteSpanContext: traceparent, else the
// Diagnostic-Id that Azure's SDKs in other languages write), so the trace
// holds across worker restarts; the HTTP target's POST is a client span
// whose context the backend receives in the traceparent header, and the
// settlement a span of its own. A failed delivery's spans say its outcome
// and why (status code, dead-letter reason), never the backend's answer.
//
// Dead-letter tooling: ListDeadLetters, Replay and Purge work on any
// DeadLetterQueue. Replay sends a copy before it removes the original (a
// crash duplicates, never loses); a message taken and not processed is
// given back; every failure is joined into the returned error, and
// ReplayResult.Incomplete reports a run that did less than it selected.
package consumer
