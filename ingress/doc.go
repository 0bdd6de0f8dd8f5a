// Package ingress is hookbridge's public front door: an Echo server that
// verifies every request, parses and normalizes its events, and answers 200
// only once the queue has them.
//
// Each event route runs the same pipeline: concurrency limit → verify (every
// configured Verifier must pass) → content type → bounded body → parse and
// normalize (package schemas) → Publisher.PublishEvents, which returns only
// after the events are durably queued → 200. Failures are *Error values
// rendered by one error handler as {"error": "...", "id": "..."} with the
// status of the design's contract; the detail is logged under the same id.
//
// Verifiers:
//   - ACSVerifier checks the JWT Call Automation sends with every callback:
//     OpenID Connect discovery and a JWKS through keyfunc, refreshed in the
//     background and, at a bounded rate, for tokens with an unknown kid. A
//     token whose kid is unknown right after a fresh refresh gets 401; one
//     that cannot be checked yet (keys never loaded, refresh budget spent,
//     JWKS unreachable) gets 503 with Retry-After, so a real key rotation is
//     retried by the sender instead of lost.
//
// The ingress knows nothing of Service Bus or SQLite: it declares Publisher
// and the queue layer (package relay) implements it. AdminHandler serves the
// private admin listener (/healthz, /readyz, /metrics).
//
// Package devissuer is a development OpenID Connect issuer for `hookbridge
// dev` and tests.
package ingress
