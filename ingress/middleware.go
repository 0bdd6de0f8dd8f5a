package ingress

import (
	"log/slog"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"
	"go.opentelemetry.io/otel/trace"
)

const (
	outcomeAccepted  = "accepted"
	outcomeHandshake = "handshake"
	outcomeRejected  = "rejected"
	outcomeFailed    = "failed"
)

// reqContext is the echo.Context of a request on a served route, with what
// the access log reports about it and the request's scratch memory. It
// lives in the scratch, so wrapping a request allocates nothing (Echo's own
// Set would allocate a map per request).
type reqContext struct {
	echo.Context
	sc      *scratch
	events  int
	outcome string
	cause   string
}

// setEvents records how many events a request stored.
func setEvents(c echo.Context, n int) {
	if rc, ok := c.(*reqContext); ok {
		rc.events = n
	}
}

// setOutcome records what a successful request was, when it is not a plain
// event delivery (an Event Grid handshake), or a cause worth counting on an
// accepted one (token_reused, malformed_event), for metrics and the access
// log.
func setOutcome(c echo.Context, outcome, cause string) {
	if rc, ok := c.(*reqContext); ok {
		rc.outcome, rc.cause = outcome, cause
	}
}

// scratchOf returns the scratch memory of a request.
func (s *Server) scratchOf(c echo.Context) (sc *scratch, owned bool) {
	if rc, ok := c.(*reqContext); ok {
		return rc.sc, false
	}
	return s.getScratch(), true
}

// chain wraps a route's handler in the middleware, once, at registration:
// observe → concurrency limit → rate limit → handler. (Middleware added
// with Echo's Use is applied anew on every request, allocating each time.)
func (s *Server) chain(h echo.HandlerFunc) echo.HandlerFunc {
	if s.limiter != nil {
		h = s.limitRate(h)
	}
	return s.observe(s.limitConcurrency(h))
}

// observe wraps the request's context, renders any error, and records the
// request: the one place where request errors are logged.
func (s *Server) observe(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		start := time.Now()
		if s.draining.Load() {
			c.Response().Header().Set(echo.HeaderConnection, "close")
		}
		var reserve stackReserve
		reserve.keep()
		sc := s.getScratch()
		defer s.putScratch(sc)
		rc := &sc.rc
		*rc = reqContext{Context: c, sc: sc, events: -1}
		var span trace.Span
		if s.trace != nil {
			span = s.trace.startRequest(c)
		}
		err := next(rc)
		herr := s.record(c, rc, start, err)
		if span != nil {
			s.trace.endRequest(span, c, rc, herr)
		}
		*rc = reqContext{}
		return nil
	}
}

// stackReserve is stack space a request holds for its whole life. A
// request's goroutine reaches its deepest while the token is verified (the
// JWT and JWKS libraries) and then parks, shallow, until its commit is
// durable; if the garbage collector runs meanwhile it halves a stack so
// little used, and the next request on that goroutine (a keep-alive
// connection) pays to grow and copy it again, tens of microseconds a
// request under load. Holding this much of the stack through the wait
// keeps it above the collector's shrinking threshold (a quarter in use).
type stackReserve [1 << 10]byte

//go:noinline
func (r *stackReserve) keep() {} // keeps r on the stack: it does not escape

// handleError is Echo's error handler: it sees the errors of requests no
// route matched (404, 405), which observe does not wrap.
func (s *Server) handleError(err error, c echo.Context) {
	s.record(c, nil, time.Now(), err)
}

// record renders err, if any, counts the request and writes its access-log
// line. It returns err as rendered, nil when there was none.
func (s *Server) record(c echo.Context, rc *reqContext, start time.Time, err error) *Error {
	var herr *Error
	if err != nil {
		herr = toError(err)
		render(c, herr)
	}
	path := c.Path()
	if path == "" {
		path = "unmatched"
	}
	outcome, cause, events := outcomeAccepted, "", -1
	if rc != nil {
		if rc.outcome != "" {
			outcome, cause = rc.outcome, rc.cause
		}
		events = rc.events
	}
	level := slog.LevelInfo
	if herr != nil {
		cause = herr.Cause
		outcome, level = outcomeRejected, slog.LevelWarn
		if herr.Status >= 500 || herr.Status == http.StatusTooManyRequests {
			outcome = outcomeFailed
		}
		if herr.Status >= 500 {
			level = slog.LevelError
		}
	}
	d := time.Since(start)
	s.metrics.observe(path, outcome, cause, d)

	ctx := c.Request().Context()
	if !s.log.Enabled(ctx, level) {
		return herr
	}
	attrs := make([]slog.Attr, 0, 12)
	attrs = append(attrs,
		slog.String("method", c.Request().Method),
		slog.String("route", path),
		slog.Int("status", c.Response().Status),
		slog.Duration("duration", d),
		slog.Int64("bytes_in", c.Request().ContentLength),
		slog.String("remote_ip", c.RealIP()),
	)
	if events >= 0 {
		attrs = append(attrs, slog.Int("events", events))
	}
	switch {
	case outcome == outcomeHandshake:
		attrs = append(attrs, slog.String("handshake", cause))
	case herr == nil && cause != "":
		attrs = append(attrs, slog.String("cause", cause))
	}
	if herr != nil {
		attrs = append(attrs, slog.String("cause", herr.Cause), slog.String("error_id", herr.id()))
		if herr.Err != nil {
			attrs = append(attrs, slog.String("error", herr.Err.Error()))
		}
	}
	s.log.LogAttrs(ctx, level, "request", attrs...)
	return herr
}

// limitConcurrency holds requests beyond MaxConcurrentRequests until one
// in progress ends, up to EnqueueTimeout, and refuses them then: a burst
// (or a queue turning slow for a moment) costs latency, not events, since
// Call Automation does not resend a refused callback.
func (s *Server) limitConcurrency(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		select {
		case s.slots <- struct{}{}:
		default:
			t := time.NewTimer(s.cfg.EnqueueTimeout)
			select {
			case s.slots <- struct{}{}:
				t.Stop()
			case <-t.C:
				return unavailable(CauseOverloaded, "too many requests in progress; retry later", time.Second, nil)
			case <-c.Request().Context().Done():
				t.Stop()
				return unavailable(CauseOverloaded, "too many requests in progress; retry later", time.Second, c.Request().Context().Err())
			}
		}
		defer func() { <-s.slots }()
		return next(c)
	}
}
