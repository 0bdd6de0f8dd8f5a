// Package ingress is hookbridge's public front door: an Echo server that
// verifies every request, parses and normalizes its events, and answers 200
// only once the queue has them.
//
// Each event route runs the same pipeline (pipeline.go, ingest): concurrency
// limit → verify (every configured Verifier must pass) → content type →
// bounded body (its size, and its share of the bytes all requests may hold
// at once) → replay check → parse and normalize (schemas.Parse) → map to
// relay messages → Publisher.Publish, which returns only after the messages
// are durably stored → 200.
//
// Once every verifier passed and the body is JSON, nothing is refused: each
// event is queued, and each element that breaks an envelope rule is stored
// as received in the dead-letter queue (relay.NewMalformedMessage, reason
// MalformedEvent). Failures are *Error values (errors.go) rendered as
// {"error": "...", "id": "..."} with the status of the design's contract,
// and logged once, with the same id, by the access-log middleware
// (middleware.go).
//
// Verifiers (a Verifier returns a Credential: for JWTs the token, its
// expiry and its jti):
//   - ACSVerifier checks the JWT Call Automation sends with every callback:
//     OpenID Connect discovery and a JWKS through keyfunc, refreshed in the
//     background and, at a bounded rate, for tokens with an unknown kid. A
//     token whose kid is unknown right after a fresh refresh gets 401; one
//     that cannot be checked yet (keys never loaded, refresh budget spent,
//     JWKS unreachable) gets 503 with Retry-After, so a real key rotation is
//     retried by the sender instead of lost. The replay defence
//     (ReplayDefence) binds each of its tokens to the body it delivered.
//   - EntraVerifier checks the Microsoft Entra token of Event Grid's secured
//     webhook delivery (tenant, audience, Event Grid as caller), caching a
//     verified token until it expires since Event Grid reuses it.
//   - APIKeyVerifier checks a shared key from the key query parameter or the
//     X-Api-Key header, in constant time, and removes it from the request.
//   - SignedURLVerifier checks a callback URL signed with SignCallbackURL.
//
// The Entra token cache and the per-client rate limits are LRUs from
// hashicorp/golang-lru's simplelru under the owner's lock. The replay
// defence, which holds every Call Automation token of the last minutes,
// keeps them in pointer-free slots linked in arrival order, with a map
// index, so the garbage collector never scans them (see replayGuard).
//
// Serve drains on shutdown: readiness (Server.Ready) fails at once while
// the listener keeps serving for DrainDelay, then requests in progress
// finish their commits.
//
// Tracing (Config.TracerProvider; off when nil, at the cost of a nil check
// per request): each request on an event route is a server span "POST
// <route>" continuing the sender's W3C traceparent header (a new trace
// without one), with a child "verify" span and a producer span "send
// <queue>" covering the mapping to messages and the wait for the group
// commit. Every event and message of the request carries the send span's
// context: the events as the CloudEvents distributed tracing extension
// (traceparent, tracestate; a sender's own is replaced and linked to), the
// messages as application properties (relay.TraceContext), so the worker
// continues the trace. Spans hold the route, status, cause and error id,
// never a query string, header, token or body.
//
// The ingress knows nothing of Service Bus or SQLite: it declares Publisher
// and the queue layer (package relay) implements it. AdminHandler serves the
// private admin listener (/healthz, /readyz, /metrics).
package ingress
