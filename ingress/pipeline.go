package ingress

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"mime"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/labstack/echo/v4"
	"go.opentelemetry.io/otel/trace"

	"github.com/hookbridge/hookbridge/relay"
	"github.com/hookbridge/hookbridge/schemas"
)

// Media types accepted on /acs/callbacks: JSON in any of its CloudEvents
// forms. Call Automation's exact Content-Type is not documented, so a missing
// one is accepted too.
var acsMediaTypes = map[string]bool{
	"application/json":                   true,
	"application/cloudevents+json":       true,
	"application/cloudevents-batch+json": true,
	"":                                   true,
}

// parseFunc parses a body of the given media type into dst, leniently (see
// schemas.Parse).
type parseFunc func(body []byte, mediaType string, p schemas.Provenance, dst *schemas.Parsed) error

func acsParse(body []byte, _ string, p schemas.Provenance, dst *schemas.Parsed) error {
	return schemas.Parse(body, schemas.FormatCallAutomation, p, dst)
}

// scratch is the memory one request reuses from the last: the body buffer,
// the parse result and the credentials. Nothing in it outlives the request:
// the messages handed to the queue own their bytes.
type scratch struct {
	body   bytes.Buffer
	parsed schemas.Parsed
	creds  []Credential
	rc     reqContext
}

// Largest scratch memory kept for the next request: bigger bodies are rare
// (Event Grid batches) and their buffers go back to the garbage collector.
const (
	maxPooledBody   = 64 << 10
	maxPooledEvents = 64
)

func (s *Server) getScratch() *scratch {
	return s.scratch.Get().(*scratch)
}

func (s *Server) putScratch(sc *scratch) {
	sc.body.Reset()
	sc.parsed.Reset()
	clear(sc.creds)
	if sc.body.Cap() > maxPooledBody || cap(sc.parsed.Events) > maxPooledEvents || cap(sc.parsed.Malformed) > maxPooledEvents {
		return
	}
	s.scratch.Put(sc)
}

// ingest is the pipeline of every event route, top to bottom: verify →
// media type → bounded body → replay check → parse → publish → 200.
//
// Once every verifier passed and the body is JSON, nothing the sender posted
// is refused: each event is normalized and queued, and each element that is
// not a valid event goes to the dead-letter queue as MalformedEvent (see
// schemas.Parse). Only what can never succeed gets a 4xx: bad credentials,
// a body that is not JSON, too large, or of a wrong media type.
func (s *Server) ingest(c echo.Context, r *route, media map[string]bool, parse parseFunc) error {
	req := c.Request()
	received := time.Now()
	sc, owned := s.scratchOf(c)
	if owned {
		defer s.putScratch(sc)
	}

	creds, err := s.verifyTraced(c, r, sc.creds[:0])
	sc.creds = creds
	if err != nil {
		return err
	}
	mt, err := mediaType(req.Header.Get("Content-Type"), media)
	if err != nil {
		return err
	}
	reserved, err := s.reserveBody(req)
	if err != nil {
		return err
	}
	// The share goes back when the request ends, unless publish hands it
	// to a HoldingPublisher, which gives it back when it lets go of the
	// messages.
	release := sync.OnceFunc(func() { s.bodies.Release(reserved) })
	handed := false
	defer func() {
		if !handed {
			release()
		}
	}()
	if err := readBody(c, &sc.body, s.cfg.MaxBodyBytes); err != nil {
		return err
	}
	body := sc.body.Bytes()

	var ticket replayTicket
	if r.replay != nil {
		if ticket, err = r.replay.check(creds, body, received); err != nil {
			return err
		}
		if ticket.seen {
			// This token already delivered this very body: it is queued.
			return accepted(c, 0, 0)
		}
		if ticket.reused {
			setOutcome(c, outcomeAccepted, CauseTokenReused)
		}
	}
	if err := parse(body, mt, schemas.Provenance{Received: received, Route: r.name, Verifier: r.verifier}, &sc.parsed); err != nil {
		r.replay.release(ticket, false)
		return parseError(err)
	}
	ctx := req.Context()
	var send trace.Span
	var tc relay.TraceContext
	if s.trace != nil {
		ctx, send, tc = s.trace.startSend(ctx, &sc.parsed)
	}
	msgs := toMessages(&sc.parsed, s.cfg.MaxMessageBytes)
	events, dead := len(sc.parsed.Events), len(sc.parsed.Malformed)
	if send != nil {
		for i := range msgs {
			tc.Apply(&msgs[i])
		}
	}
	handed = true
	err = s.publish(ctx, r, msgs, events, dead, release)
	if send != nil {
		endSend(send, msgs, events, dead, err)
	}
	r.replay.release(ticket, err == nil) // a token whose events were not queued stays usable
	if err != nil {
		return err
	}
	if dead > 0 {
		s.logMalformed(c, r, &sc.parsed, msgs[events:])
		if !ticket.reused { // a reuse has no other counter; malformed events do
			setOutcome(c, outcomeAccepted, CauseMalformedEvent)
		}
	}
	setEvents(c, events+dead)
	return accepted(c, events, dead)
}

// accepted answers 200 with the count of events queued and, when there
// are any, of events dead-lettered as malformed.
func accepted(c echo.Context, events, dead int) error {
	if dead == 0 && events < len(acceptedBodies) {
		return c.JSONBlob(http.StatusOK, acceptedBodies[events])
	}
	b := make([]byte, 0, 48)
	b = append(b, `{"accepted":`...)
	b = strconv.AppendInt(b, int64(events), 10)
	if dead > 0 {
		b = append(b, `,"dead_lettered":`...)
		b = strconv.AppendInt(b, int64(dead), 10)
	}
	b = append(b, "}\n"...)
	return c.JSONBlob(http.StatusOK, b)
}

// acceptedBodies are the answers to the common requests, encoded once.
var acceptedBodies = func() [][]byte {
	bodies := make([][]byte, 16)
	for i := range bodies {
		bodies[i] = []byte(`{"accepted":` + strconv.Itoa(i) + "}\n")
	}
	return bodies
}()

// maxMalformedLogs bounds the log lines one request writes about its
// malformed events; the rest are counted in one line.
const maxMalformedLogs = 10

// logMalformed logs the dead-lettered elements of a request: the body is in
// the dead-letter queue, the log says where to find it.
func (s *Server) logMalformed(c echo.Context, r *route, p *schemas.Parsed, msgs []relay.Message) {
	ctx := c.Request().Context()
	for i := range p.Malformed {
		if i == maxMalformedLogs {
			s.log.WarnContext(ctx, "more events of this request were dead-lettered as MalformedEvent",
				"route", r.path, "count", len(p.Malformed)-maxMalformedLogs)
			return
		}
		m := &p.Malformed[i]
		s.log.WarnContext(ctx, "event dead-lettered as MalformedEvent: it breaks an envelope rule; inspect it with hookbridge dlq show",
			"route", r.path, "index", m.Index, "event_id", m.ID, "message_id", msgs[i].ID,
			"partition_key", m.PartitionKey, "rule", m.Err.Error())
	}
}

// toMessages maps a parse result to the request's messages: one per event
// (relay.NewMessage), then one per malformed element, bound for the
// dead-letter queue (relay.NewMalformedMessage). An event whose normalized
// form is larger than maxBytes (0: no limit), the most the queue takes, is
// malformed too: escaping can make a string up to six times as long, so an
// event that fit the body can outgrow the queue. The messages own their
// bytes: nothing aliases the request's scratch memory.
func toMessages(p *schemas.Parsed, maxBytes int) []relay.Message {
	msgs := make([]relay.Message, 0, len(p.Events)+len(p.Malformed))
	for i := 0; i < len(p.Events); {
		m, err := relay.NewMessage(&p.Events[i])
		if err != nil {
			// Parse only yields events that encode; should one not, it is
			// still kept, in the dead-letter queue.
			p.Reject(i, "cannot be encoded as a normalized event: "+err.Error())
			continue
		}
		if maxBytes > 0 && len(m.Body) > maxBytes {
			p.Reject(i, fmt.Sprintf("normalized, it is %d bytes, more than the queue takes (%d bytes, max_message_bytes); kept as received", len(m.Body), maxBytes))
			continue
		}
		msgs = append(msgs, m)
		i++
	}
	for i := range p.Malformed {
		msgs = append(msgs, relay.NewMalformedMessage(&p.Malformed[i]))
	}
	return msgs
}

// verify runs the route's verifiers, appending what they accepted to
// creds; every one must pass. On a handshake (which enqueues nothing) a
// bearer-token verifier is skipped when the request has no Authorization
// header.
func (s *Server) verify(c echo.Context, r *route, handshake bool, creds []Credential) ([]Credential, error) {
	req := c.Request()
	if r.verifier == VerifierInsecure {
		s.log.Warn("INSECURE: accepting an unauthenticated request", "route", r.path, "remote_ip", c.RealIP())
		return creds, nil
	}
	// Each verifier sees the URL as it came, whatever the verifiers before
	// it removed from it (an API key, a signature's parameters): a signed
	// callback URL may carry the API key. What any of them removed is gone
	// once all passed.
	orig := req.URL.RawQuery
	var removed []string
	for _, v := range r.verifiers {
		if handshake && isBearer(v) && req.Header.Get("Authorization") == "" {
			continue
		}
		req.URL.RawQuery = orig
		cred, err := v.Verify(req)
		if err != nil {
			return creds, err
		}
		if req.URL.RawQuery != orig {
			removed = append(removed, removedParams(orig, req.URL.RawQuery)...)
		}
		creds = append(creds, cred)
	}
	req.URL.RawQuery = orig
	if len(removed) > 0 {
		q := req.URL.Query()
		for _, p := range removed {
			q.Del(p)
		}
		req.URL.RawQuery = q.Encode()
	}
	return creds, nil
}

// removedParams lists the query parameters of before that after lacks.
func removedParams(before, after string) []string {
	b, _ := url.ParseQuery(before)
	a, _ := url.ParseQuery(after)
	var out []string
	for p := range b {
		if !a.Has(p) {
			out = append(out, p)
		}
	}
	return out
}

// mediaType checks the Content-Type against the accepted media types.
func mediaType(ct string, accepted map[string]bool) (string, error) {
	if ct == "" {
		if accepted[""] {
			return "", nil
		}
		return "", unsupportedMedia("missing Content-Type; send application/json", nil)
	}
	if accepted[ct] { // the common case, without parameters
		return ct, nil
	}
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil || !accepted[mt] {
		return "", unsupportedMedia("unsupported Content-Type; send application/json, application/cloudevents+json or application/cloudevents-batch+json",
			fmt.Errorf("content type %q", ct))
	}
	// JSON is UTF-8 (RFC 8259); "utf8" is a common spelling of it.
	if cs, ok := params["charset"]; ok && !strings.EqualFold(cs, "utf-8") && !strings.EqualFold(cs, "utf8") {
		return "", unsupportedMedia("unsupported charset; send UTF-8", fmt.Errorf("charset %q", cs))
	}
	return mt, nil
}

// reserveBody takes the request body's share of MaxBodyBytesInFlight (its
// Content-Length, or MaxBodyBytes when unknown), waiting up to
// EnqueueTimeout: the bound on the memory bodies being parsed and committed
// hold. The caller releases the returned amount. A body announced larger
// than MaxBodyBytes is refused here, before it is read.
func (s *Server) reserveBody(req *http.Request) (int64, error) {
	limit := s.cfg.MaxBodyBytes
	if req.ContentLength > limit {
		return 0, bodyTooLarge(limit, fmt.Errorf("Content-Length %d", req.ContentLength))
	}
	n := limit
	if req.ContentLength >= 0 {
		n = max(req.ContentLength, 1)
	}
	if s.bodies.TryAcquire(n) {
		return n, nil
	}
	ctx, cancel := context.WithTimeout(req.Context(), s.cfg.EnqueueTimeout)
	defer cancel()
	if err := s.bodies.Acquire(ctx, n); err != nil {
		return 0, unavailable(CauseOverloaded, "too many request bodies in progress; retry later", time.Second,
			fmt.Errorf("waiting for %d of --max-body-bytes-in-flight: %w", n, err))
	}
	return n, nil
}

func bodyTooLarge(limit int64, err error) *Error {
	return tooLarge(CauseBodyTooLarge, fmt.Sprintf("request body larger than %d bytes", limit), err)
}

// readBody reads the request body into buf, refusing more than limit bytes.
// A body that does not arrive whole (the read timed out, the connection
// broke) gets 408, which senders retry: it is no fault of the content.
func readBody(c echo.Context, buf *bytes.Buffer, limit int64) error {
	req := c.Request()
	if req.ContentLength > 0 {
		buf.Grow(int(req.ContentLength) + bytes.MinRead) // room to read EOF without growing
	}
	_, err := buf.ReadFrom(http.MaxBytesReader(c.Response(), req.Body, limit))
	if err == nil {
		return nil
	}
	return bodyError(err, limit)
}

// bodyError maps a failure to read a body.
func bodyError(err error, limit int64) error {
	var mbe *http.MaxBytesError
	var ne net.Error
	switch {
	case errors.As(err, &mbe):
		return bodyTooLarge(limit, err)
	case errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout():
		return requestTimeout(CauseBodyTimeout, "the request body did not arrive within the server's read timeout; retry", err)
	default:
		return requestTimeout(CauseBodyIncomplete, "the request body could not be read whole; retry", err)
	}
}

// parseError maps a body-level parse failure: not JSON is 400, more events
// than allowed 413. Event-level problems never get here (they are
// dead-lettered) except on handshakes, which the strict parsers read.
func parseError(err error) error {
	// Parser messages name positions and attributes only, never values, so
	// they are safe and useful to show.
	switch {
	case errors.Is(err, schemas.ErrTooManyEvents):
		return tooLarge(CauseTooManyEvents, err.Error(), err)
	case errors.Is(err, schemas.ErrMalformed):
		return badRequest(CauseMalformedBody, err.Error(), err)
	default:
		return badRequest(CauseInvalidEvent, err.Error(), err)
	}
}

// publish hands the request's messages to the queue and waits for the
// commit.
func (s *Server) publish(ctx context.Context, r *route, msgs []relay.Message, events, dead int, release func()) error {
	if len(msgs) == 0 {
		release()
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.EnqueueTimeout)
	defer cancel()
	var err error
	if hp, ok := s.cfg.Publisher.(HoldingPublisher); ok {
		err = hp.PublishHolding(ctx, msgs, release)
	} else {
		err = s.cfg.Publisher.Publish(ctx, msgs)
		release()
	}
	switch {
	case err == nil:
		r.metrics.enqueued.Add(float64(events))
		if dead > 0 {
			r.metrics.deadLettered.Add(float64(dead))
		}
		return nil
	case errors.Is(err, relay.ErrMessageTooLarge):
		return tooLarge(CauseEventTooLarge, "an event is too large for the queue; it can never be accepted", err)
	default:
		return unavailable(CauseQueueUnavailable, "the queue could not take the events; retry later", 5*time.Second, err)
	}
}
