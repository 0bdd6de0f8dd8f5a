package ingress

import (
	"log/slog"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"
)

const (
	eventsKey  = "hookbridge.events"
	outcomeKey = "hookbridge.outcome"

	outcomeAccepted  = "accepted"
	outcomeHandshake = "handshake"
	outcomeRejected  = "rejected"
	outcomeFailed    = "failed"
)

func setEvents(c echo.Context, n int) { c.Set(eventsKey, n) }

// setOutcome records what a successful request was, when it is not a plain
// event delivery (an Event Grid handshake), or a cause worth counting on an
// accepted one (token_reused, malformed_event), for metrics and the access
// log.
func setOutcome(c echo.Context, outcome, cause string) { c.Set(outcomeKey, [2]string{outcome, cause}) }

// observe records metrics and writes the access log line of every request;
// errors are rendered here, so the final status is known. It is the one
// place where request errors are logged.
func (s *Server) observe(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		start := time.Now()
		if s.draining.Load() {
			c.Response().Header().Set(echo.HeaderConnection, "close")
		}
		err := next(c)
		var herr *Error
		if err != nil {
			herr = toError(err)
			render(c, herr)
		}
		path := c.Path()
		if path == "" {
			path = "unmatched"
		}
		outcome, cause := outcomeAccepted, ""
		if oc, ok := c.Get(outcomeKey).([2]string); ok {
			outcome, cause = oc[0], oc[1]
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
			return nil
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
		if n, ok := c.Get(eventsKey).(int); ok {
			attrs = append(attrs, slog.Int("events", n))
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
		return nil
	}
}

// limitConcurrency refuses requests beyond MaxConcurrentRequests.
func (s *Server) limitConcurrency(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		select {
		case s.slots <- struct{}{}:
			defer func() { <-s.slots }()
			return next(c)
		default:
			return unavailable(CauseOverloaded, "too many requests in progress; retry later", time.Second, nil)
		}
	}
}
