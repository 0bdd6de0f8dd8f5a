// Package console is hookbridge's web console (`hookbridge console`): a
// private web page over a queue and its dead-letter queue, for the two
// questions an operator asks when a call misbehaves: where is this call's
// event now, and why did it fail.
//
// Pages are rendered on the server with html/template (every value is
// escaped: message bodies are attacker-influenced data) from templates and
// assets embedded in the binary, so the console works air-gapped; a small
// script adds "select all" and auto-refresh. Pages:
//   - Overview: messages in the queue by state, the calls with a backlog and
//     their next event, the dead-letter queue by reason and by type, the
//     spool of a Service Bus ingress when given, and live rates scraped from
//     the ingress's and workers' /metrics (Prometheus text format).
//   - Find: an event ID, message ID or partition key (a call's correlation
//     ID) across the queue and the dead-letter queue; each call found is
//     shown whole, its events in order with their state.
//   - Dead letters: the filters of hookbridge dlq, a message's full body,
//     and replay or purge of one message, a selection or every match of a
//     filter. Each action is previewed first (a dry run) and then applied to
//     exactly the previewed messages through consumer.Replay and
//     consumer.Purge, with their guarantees (a replay sends the copy before
//     it removes the original). A purge is confirmed by typing the count.
//     Every action is logged with the requester's address and identity.
//
// Security: without tokens the console answers only requests addressed to
// a loopback name (a defence against DNS rebinding); the command refuses a
// non-loopback listener without one. With tokens, a login form sets an
// HttpOnly, SameSite=Lax session cookie (sent when an operator follows a
// link from another site, never on another site's form posts or fetches); tokens are compared in constant
// time and never rendered or logged. Every POST needs the session's CSRF
// token (an HMAC of the session ID, compared in constant time) and passes
// Origin and Sec-Fetch-Site checks. Responses carry a Content Security
// Policy without inline script, X-Frame-Options DENY and no-store.
//
// The console reads a backend through the Queue interface, which both
// relay backends implement: Summary, Find and Peek (relay/sqlite and
// relay/servicebus browse.go) and consumer.DeadLetterQueue. Server.Run owns
// the metrics scraping goroutine.
package console
