package consumer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/hookbridge/hookbridge/schemas"
)

// Stdout is a Handler that writes each event as one JSON line to w.
type Stdout struct {
	mu sync.Mutex
	w  io.Writer
}

// NewStdout returns a Handler writing JSON lines to w.
func NewStdout(w io.Writer) *Stdout { return &Stdout{w: w} }

// Handle writes e as one line. A write error is retryable.
func (s *Stdout) Handle(_ context.Context, e *schemas.Event) error {
	b, err := e.MarshalJSON()
	if err != nil {
		return Permanent(ReasonInvalidMessage, err)
	}
	b = append(b, '\n')
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, err := s.w.Write(b); err != nil {
		return fmt.Errorf("write event: %w", err)
	}
	return nil
}

// HTTPConfig configures an HTTP target.
type HTTPConfig struct {
	// URL is the backend endpoint events are POSTed to. Required.
	URL string
	// Client sends the requests. Default: a client with sensible pooling
	// and no overall timeout (the worker's delivery timeout bounds each
	// request). Redirects are never followed, with this client too: the
	// target uses a copy of it whose CheckRedirect stops at the first
	// answer (see HTTP).
	Client *http.Client
	// Header is added to every request, for example an Authorization header
	// the backend expects.
	Header http.Header
	// TracerProvider, when set, traces every POST as a client span ("POST",
	// with the method, server address and port, the URL without
	// credentials or query, and the response's status) and sends its
	// context to the backend in the W3C traceparent (and tracestate)
	// header. Default nil: no span, no header.
	TracerProvider trace.TracerProvider
}

// HTTP is a Handler that POSTs each event to a backend in the CloudEvents
// HTTP binding's structured mode (Content-Type application/cloudevents+json).
//
// Outcomes: 2xx → delivered; 408, 429 and 5xx → retry (honouring
// Retry-After); any other status → permanent, dead-lettered with reason
// BackendRejected; network errors and timeouts → retry.
//
// Redirects are not followed. Go's client would re-send a 301, 302 or 303
// as a GET without the event, and a 2xx from wherever that lands would
// mark the event delivered; a 307 or 308 would send the event to a URL
// nobody configured. A 3xx means the delivery URL is wrong: the event is
// dead-lettered with reason BackendRejected and the redirect's target
// (without credentials or query) in the description, to be replayed once
// the URL is fixed.
type HTTP struct {
	url     string
	display string // the URL without credentials or query, for logs and reasons
	client  *http.Client
	header  http.Header
	tracer  trace.Tracer // nil: tracing off
	attrs   []attribute.KeyValue
}

// NewHTTP returns an HTTP target.
func NewHTTP(cfg HTTPConfig) (*HTTP, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("delivery URL %q: must be an absolute http:// or https:// URL", Redact(cfg.URL))
	}
	var client *http.Client
	if cfg.Client != nil {
		c := *cfg.Client // the caller's client is theirs: change a copy
		client = &c
	} else {
		client = &http.Client{Transport: &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConns:          256,
			MaxIdleConnsPerHost:   256,
			IdleConnTimeout:       90 * time.Second,
			TLSHandshakeTimeout:   5 * time.Second,
			ResponseHeaderTimeout: 0,
			ForceAttemptHTTP2:     true,
		}}
	}
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	h := &HTTP{url: cfg.URL, display: Redact(cfg.URL), client: client, header: cfg.Header.Clone()}
	if cfg.TracerProvider != nil {
		h.tracer = cfg.TracerProvider.Tracer(instrumentation)
		h.attrs = []attribute.KeyValue{semconv.HTTPRequestMethodPost, semconv.ServerAddress(u.Hostname()), semconv.URLFull(h.display)}
		if port := u.Port(); port != "" {
			if n, err := strconv.Atoi(port); err == nil {
				h.attrs = append(h.attrs, semconv.ServerPort(n))
			}
		}
	}
	return h, nil
}

// Redact returns raw without user info and query, so a URL can be logged
// without its secrets.
func Redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "<invalid URL>"
	}
	u.User = nil
	if u.RawQuery != "" {
		u.RawQuery = "REDACTED"
	}
	u.Fragment = ""
	return u.String()
}

// Handle POSTs e to the backend.
func (h *HTTP) Handle(ctx context.Context, e *schemas.Event) error {
	if h.tracer == nil {
		return h.post(ctx, e, nil)
	}
	ctx, span := h.tracer.Start(ctx, http.MethodPost, trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(h.attrs...))
	defer span.End()
	return h.post(ctx, e, span)
}

// post sends e; span, when not nil, is the request's client span: its
// context goes in the request's headers, the outcome on it.
func (h *HTTP) post(ctx context.Context, e *schemas.Event, span trace.Span) error {
	body, err := e.MarshalJSON()
	if err != nil {
		return Permanent(ReasonInvalidMessage, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.url, bytes.NewReader(body))
	if err != nil {
		return Permanent(ReasonBackendRejected, fmt.Errorf("build request to %s: %w", h.display, err))
	}
	for k, v := range h.header {
		req.Header[k] = v
	}
	req.Header.Set("Content-Type", schemas.ContentType)
	if span != nil {
		propagation.TraceContext{}.Inject(ctx, propagation.HeaderCarrier(req.Header))
	}
	resp, err := h.client.Do(req)
	if err != nil {
		err = scrubURLError(err)
		if span != nil {
			span.SetStatus(codes.Error, err.Error())
			span.SetAttributes(semconv.ErrorTypeKey.String(transportErrorType(ctx, err)))
		}
		return fmt.Errorf("POST %s: %w", h.display, err)
	}
	defer resp.Body.Close()
	if span != nil {
		span.SetAttributes(semconv.HTTPResponseStatusCode(resp.StatusCode))
		if resp.StatusCode >= 300 {
			// The status, never the backend's answer: it may echo the event.
			span.SetStatus(codes.Error, resp.Status)
			span.SetAttributes(semconv.ErrorTypeKey.String(strconv.Itoa(resp.StatusCode)))
		}
	}
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) // reuse the connection
	code := resp.StatusCode
	if code >= 200 && code < 300 {
		return nil
	}
	if code >= 300 && code < 400 {
		return Permanent(ReasonBackendRejected, fmt.Errorf("POST %s answered %s, a redirect%s; redirects are not followed: set the delivery URL to the final one, then replay",
			h.display, resp.Status, redirectTarget(req.URL, resp.Header.Get("Location"))))
	}
	err = fmt.Errorf("POST %s answered %s%s", h.display, resp.Status, bodyText(snippet))
	switch {
	case code == http.StatusRequestTimeout || code == http.StatusTooManyRequests || code >= 500:
		if d, ok := retryAfter(resp.Header.Get("Retry-After"), time.Now()); ok {
			return RetryAfter(d, err)
		}
		return err
	default:
		return Permanent(ReasonBackendRejected, err)
	}
}

// scrubURLError removes the URL (which may carry credentials) from a
// *url.Error, keeping the cause.
func scrubURLError(err error) error {
	if ue, ok := err.(*url.Error); ok {
		return ue.Err
	}
	return err
}

// redirectTarget describes a redirect's Location, resolved against the
// request's URL, without credentials or query.
func redirectTarget(base *url.URL, location string) string {
	if location == "" {
		return " without a Location"
	}
	u, err := base.Parse(location)
	if err != nil {
		return " to an invalid Location"
	}
	return " to " + Redact(u.String())
}

func bodyText(b []byte) string {
	s := strings.TrimSpace(strings.ToValidUTF8(string(b), "?"))
	if s == "" {
		return ""
	}
	return ": " + strings.Join(strings.Fields(s), " ")
}

// retryAfter parses a Retry-After header: delay seconds or an HTTP date.
func retryAfter(v string, now time.Time) (time.Duration, bool) {
	if v == "" {
		return 0, false
	}
	if s, err := strconv.Atoi(v); err == nil && s >= 0 {
		return time.Duration(s) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(t.Sub(now), 0), true
	}
	return 0, false
}

// transportErrorType classifies a request that got no answer, for spans'
// error.type.
func transportErrorType(ctx context.Context, err error) string {
	var ne net.Error
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case ctx.Err() != nil:
		return "cancelled"
	}
	return "connection_failed"
}
