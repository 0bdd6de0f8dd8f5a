package ingress

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/hookbridge/hookbridge/relay"
	"github.com/hookbridge/hookbridge/schemas"
)

// Publisher durably enqueues events. PublishEvents returns nil only once the
// queue has every event; an error wrapping relay.ErrMessageTooLarge means an
// event can never fit, anything else that the sender should retry.
type Publisher interface {
	PublishEvents(ctx context.Context, events []schemas.Event) error
}

// Routes of the public listener.
const (
	PathACSCallbacks = "/acs/callbacks"
	PathEventGrid    = "/eventgrid"
	PathHealthz      = "/healthz"
)

// Config configures the public listener. Zero values take the defaults
// noted.
type Config struct {
	// Publisher receives every accepted event. Required.
	Publisher Publisher
	// ACSVerifiers guard POST /acs/callbacks; every one must pass. The route
	// is served only when at least one is configured (or Insecure is set).
	ACSVerifiers []Verifier
	// EventGridVerifiers guard POST and OPTIONS /eventgrid, likewise.
	EventGridVerifiers []Verifier
	// ReplayCacheSize bounds the Call Automation replay defence: how many
	// live tokens are remembered with the body they delivered. Default
	// DefaultReplayCacheSize; negative turns the defence off. It applies when
	// an /acs/callbacks verifier yields bearer tokens.
	ReplayCacheSize int
	// EventGridAllowedOrigins are the origins the CloudEvents abuse-protection
	// handshake consents to ("*" for any). Default eventgrid.azure.net.
	EventGridAllowedOrigins []string
	// EventGridAllowedRate is the WebHook-Allowed-Rate answered to the
	// handshake: requests per minute, or "*". Default "*".
	EventGridAllowedRate string
	// RateLimit is the requests per second allowed per client IP, with
	// bursts of RateBurst; zero turns per-client limiting off (the default:
	// ACS and Event Grid deliver from a few shared Azure addresses). Excess
	// requests get 429 with Retry-After.
	RateLimit float64
	RateBurst int
	// TrustedProxies are the networks of reverse proxies whose
	// X-Forwarded-For header names the client; without any, the client is
	// the TCP peer.
	TrustedProxies []netip.Prefix
	// InsecureAllowUnauthenticated serves routes with no verifier, accepting
	// anyone. Development only: it is logged loudly at start and on every
	// request.
	InsecureAllowUnauthenticated bool
	// MaxBodyBytes caps a request body. Default 1 MiB.
	MaxBodyBytes int64
	// MaxHeaderBytes caps request headers. Default 64 KiB.
	MaxHeaderBytes int
	// ReadHeaderTimeout, ReadTimeout, WriteTimeout and IdleTimeout bound a
	// connection. Defaults 5s, 30s, 40s, 120s.
	ReadHeaderTimeout time.Duration
	ReadTimeout       time.Duration
	WriteTimeout      time.Duration
	IdleTimeout       time.Duration
	// MaxConcurrentRequests caps requests in progress; more get 503. Default
	// 1024.
	MaxConcurrentRequests int
	// EnqueueTimeout bounds the wait for the queue; past it the sender gets
	// 503. Default 10s.
	EnqueueTimeout time.Duration
	// ShutdownTimeout is how long Serve waits for requests in progress when
	// it stops. Default 30s.
	ShutdownTimeout time.Duration
	// Logger receives access and error logs. Default: discard.
	Logger *slog.Logger
	// Registerer receives the ingress metrics. Default: none.
	Registerer prometheus.Registerer
}

// Defaults.
const (
	DefaultMaxBodyBytes          = 1 << 20
	DefaultMaxHeaderBytes        = 64 << 10
	DefaultMaxConcurrentRequests = 1024
	DefaultEnqueueTimeout        = 10 * time.Second
	DefaultReplayCacheSize       = 500_000
	DefaultEventGridOrigin       = "eventgrid.azure.net"
)

// Validate reports the first invalid setting.
func (c Config) Validate() error {
	switch {
	case c.Publisher == nil:
		return errors.New("ingress: no publisher (queue) configured")
	case len(c.ACSVerifiers) == 0 && len(c.EventGridVerifiers) == 0 && !c.InsecureAllowUnauthenticated:
		return errors.New("ingress: no verifier configured for any route; configure one (--acs-audience, --eventgrid-entra-tenant with --eventgrid-entra-audience, or API keys) or, for development only, pass --insecure-allow-unauthenticated")
	case c.RateLimit < 0 || c.RateBurst < 0:
		return fmt.Errorf("ingress: rate limit %g/s burst %d: must not be negative", c.RateLimit, c.RateBurst)
	case c.EventGridAllowedRate != "" && c.EventGridAllowedRate != "*" && !isPositiveInt(c.EventGridAllowedRate):
		return fmt.Errorf("ingress: Event Grid allowed rate %q: use a positive number of requests per minute or *", c.EventGridAllowedRate)
	case c.MaxBodyBytes < 0 || c.MaxBodyBytes > 64<<20:
		return fmt.Errorf("ingress: max body %d bytes: must be between 1 and %d", c.MaxBodyBytes, 64<<20)
	case c.MaxHeaderBytes < 0:
		return fmt.Errorf("ingress: max header bytes %d: must not be negative", c.MaxHeaderBytes)
	case c.ReadHeaderTimeout < 0 || c.ReadTimeout < 0 || c.WriteTimeout < 0 || c.IdleTimeout < 0:
		return errors.New("ingress: timeouts must not be negative")
	case c.MaxConcurrentRequests < 0:
		return fmt.Errorf("ingress: max concurrent requests %d: must not be negative", c.MaxConcurrentRequests)
	case c.EnqueueTimeout < 0 || c.ShutdownTimeout < 0:
		return errors.New("ingress: enqueue and shutdown timeouts must not be negative")
	}
	return nil
}

func (c *Config) setDefaults() {
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if c.MaxHeaderBytes == 0 {
		c.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if c.ReadHeaderTimeout == 0 {
		c.ReadHeaderTimeout = 5 * time.Second
	}
	if c.ReadTimeout == 0 {
		c.ReadTimeout = 30 * time.Second
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = 40 * time.Second
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = 120 * time.Second
	}
	if c.MaxConcurrentRequests == 0 {
		c.MaxConcurrentRequests = DefaultMaxConcurrentRequests
	}
	if c.EnqueueTimeout == 0 {
		c.EnqueueTimeout = DefaultEnqueueTimeout
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = 30 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.ReplayCacheSize == 0 {
		c.ReplayCacheSize = DefaultReplayCacheSize
	}
	if len(c.EventGridAllowedOrigins) == 0 {
		c.EventGridAllowedOrigins = []string{DefaultEventGridOrigin}
	}
	if c.EventGridAllowedRate == "" {
		c.EventGridAllowedRate = "*"
	}
	if c.RateLimit > 0 && c.RateBurst == 0 {
		c.RateBurst = max(1, int(c.RateLimit))
	}
}

func isPositiveInt(s string) bool {
	n, err := strconv.Atoi(s)
	return err == nil && n > 0
}

// route is one served event route.
type route struct {
	path      string
	name      string // schemas.Route*
	verifiers []Verifier
	verifier  string // names joined by "+", or "insecure"
	replay    *replayGuard
}

// Server is the public listener: Echo with the event routes.
type Server struct {
	cfg      Config
	log      *slog.Logger
	echo     *echo.Echo
	metrics  *metrics
	routes   []*route
	slots    chan struct{}
	limiter  *clientLimiter
	bufs     sync.Pool
	draining atomic.Bool
}

// New builds the server. Routes without a verifier are not served (404)
// unless InsecureAllowUnauthenticated is set.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	s := &Server{
		cfg:     cfg,
		log:     cfg.Logger,
		metrics: newMetrics(cfg.Registerer),
		slots:   make(chan struct{}, cfg.MaxConcurrentRequests),
		bufs:    sync.Pool{New: func() any { return new(bytes.Buffer) }},
	}
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.IPExtractor = echo.ExtractIPDirect()
	if len(cfg.TrustedProxies) > 0 {
		opts := []echo.TrustOption{echo.TrustLoopback(false), echo.TrustLinkLocal(false), echo.TrustPrivateNet(false)}
		for _, p := range cfg.TrustedProxies {
			opts = append(opts, echo.TrustIPRange(prefixNet(p)))
		}
		e.IPExtractor = echo.ExtractIPFromXFFHeader(opts...)
	}
	e.HTTPErrorHandler = s.handleError
	e.Use(s.observe, s.limitConcurrency)
	if cfg.RateLimit > 0 {
		s.limiter = newClientLimiter(cfg.RateLimit, cfg.RateBurst)
		e.Use(s.limitRate)
	}
	e.GET(PathHealthz, func(c echo.Context) error { return c.String(http.StatusOK, "ok\n") })

	if r := s.newRoute(PathACSCallbacks, schemas.RouteACSCallbacks, cfg.ACSVerifiers); r != nil {
		if cfg.ReplayCacheSize > 0 && slices.ContainsFunc(r.verifiers, isBearer) {
			r.replay = newReplayGuard(cfg.ReplayCacheSize)
		}
		e.POST(r.path, func(c echo.Context) error {
			return s.ingest(c, r, acsMediaTypes, func(body []byte, _ string, p schemas.Provenance) ([]schemas.Event, error) {
				return schemas.ParseCallAutomation(body, p)
			})
		})
	}
	if r := s.newRoute(PathEventGrid, schemas.RouteEventGrid, cfg.EventGridVerifiers); r != nil {
		e.POST(r.path, func(c echo.Context) error { return s.eventGrid(c, r) })
		e.OPTIONS(r.path, func(c echo.Context) error { return s.eventGridOptions(c, r) })
	}
	s.echo = e
	return s, nil
}

func isBearer(v Verifier) bool {
	_, ok := v.(bearerVerifier)
	return ok
}

func prefixNet(p netip.Prefix) *net.IPNet {
	p = p.Masked()
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func (s *Server) newRoute(path, name string, verifiers []Verifier) *route {
	r := &route{path: path, name: name, verifiers: verifiers}
	switch {
	case len(verifiers) > 0:
		r.verifier = verifierNames(verifiers)
	case s.cfg.InsecureAllowUnauthenticated:
		r.verifier = VerifierInsecure
		s.log.Warn("INSECURE: route accepts unauthenticated requests from anyone (--insecure-allow-unauthenticated); never use this in production", "route", path)
	default:
		return nil
	}
	s.routes = append(s.routes, r)
	return r
}

// Handler returns the public HTTP handler.
func (s *Server) Handler() http.Handler { return s.echo }

// Ready reports whether every verifier can decide.
func (s *Server) Ready() error {
	if s.draining.Load() {
		return errors.New("shutting down")
	}
	for _, r := range s.routes {
		for _, v := range r.verifiers {
			if !v.Ready() {
				return fmt.Errorf("%s: signing keys not loaded", v.Name())
			}
		}
	}
	return nil
}

// Serve serves on l until ctx ends, then stops accepting connections and
// waits up to ShutdownTimeout for requests in progress (each of which waits
// for its queue commit) before returning.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	hs := &http.Server{
		Handler:           s.echo,
		ReadHeaderTimeout: s.cfg.ReadHeaderTimeout,
		ReadTimeout:       s.cfg.ReadTimeout,
		WriteTimeout:      s.cfg.WriteTimeout,
		IdleTimeout:       s.cfg.IdleTimeout,
		MaxHeaderBytes:    s.cfg.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(l) }()
	select {
	case err := <-errc:
		return fmt.Errorf("ingress: serve %s: %w", l.Addr(), err)
	case <-ctx.Done():
	}
	s.draining.Store(true)
	sctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer cancel()
	err := hs.Shutdown(sctx)
	<-errc
	if err != nil {
		return fmt.Errorf("ingress: shutdown: %w (requests still in progress were cut off)", err)
	}
	return nil
}

// Media types accepted on /acs/callbacks: JSON in any of its CloudEvents
// forms. Call Automation's exact Content-Type is not documented, so a missing
// one is accepted too.
var acsMediaTypes = map[string]bool{
	"application/json":                   true,
	"application/cloudevents+json":       true,
	"application/cloudevents-batch+json": true,
	"":                                   true,
}

type parseFunc func(body []byte, mediaType string, p schemas.Provenance) ([]schemas.Event, error)

// ingest is the pipeline of every event route: verify → content type →
// bounded body → replay check → parse → publish → 200.
func (s *Server) ingest(c echo.Context, r *route, media map[string]bool, parse parseFunc) error {
	req := c.Request()
	received := time.Now()
	creds, err := s.verify(c, r, false)
	if err != nil {
		return err
	}
	mt, err := mediaType(req.Header.Get("Content-Type"), media)
	if err != nil {
		return err
	}
	buf := s.getBuffer()
	defer s.putBuffer(buf)
	if err := readBody(c, buf, s.cfg.MaxBodyBytes); err != nil {
		return err
	}
	var release func(accepted bool)
	if r.replay != nil {
		var seen bool
		if seen, release, err = r.replay.check(creds, buf.Bytes()); err != nil {
			return err
		}
		if seen {
			// This token already delivered this very body: it is queued.
			return c.JSON(http.StatusOK, map[string]int{"accepted": 0})
		}
	}
	events, err := parse(buf.Bytes(), mt, schemas.Provenance{Received: received, Route: r.name, Verifier: r.verifier})
	if err != nil {
		if release != nil {
			release(false)
		}
		return parseError(err)
	}
	err = s.publish(req.Context(), r, events)
	if release != nil {
		release(err == nil) // a token whose events were not queued stays usable
	}
	if err != nil {
		return err
	}
	setEvents(c, len(events))
	return c.JSON(http.StatusOK, map[string]int{"accepted": len(events)})
}

// verify runs the route's verifiers; every one must pass. On a handshake
// (which enqueues nothing) a bearer-token verifier is skipped when the
// request has no Authorization header.
func (s *Server) verify(c echo.Context, r *route, handshake bool) ([]Credential, error) {
	req := c.Request()
	if r.verifier == VerifierInsecure {
		s.log.Warn("INSECURE: accepting an unauthenticated request", "route", r.path, "remote_ip", c.RealIP())
		return nil, nil
	}
	creds := make([]Credential, 0, len(r.verifiers))
	for _, v := range r.verifiers {
		if handshake && isBearer(v) && req.Header.Get("Authorization") == "" {
			continue
		}
		cred, err := v.Verify(req)
		if err != nil {
			return nil, err
		}
		creds = append(creds, cred)
	}
	return creds, nil
}

func (s *Server) getBuffer() *bytes.Buffer {
	buf := s.bufs.Get().(*bytes.Buffer)
	buf.Reset()
	return buf
}

func (s *Server) putBuffer(buf *bytes.Buffer) {
	if buf.Cap() <= 2*DefaultMaxBodyBytes {
		s.bufs.Put(buf)
	}
}

// publish hands events to the queue and waits for the commit.
func (s *Server) publish(ctx context.Context, r *route, events []schemas.Event) error {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.EnqueueTimeout)
	defer cancel()
	err := s.cfg.Publisher.PublishEvents(ctx, events)
	switch {
	case err == nil:
		s.metrics.enqueued.WithLabelValues(r.name).Add(float64(len(events)))
		return nil
	case errors.Is(err, relay.ErrMessageTooLarge):
		return &Error{Status: http.StatusRequestEntityTooLarge, Cause: CauseEventTooLarge,
			Message: "an event is too large for the queue; it can never be accepted", Err: err}
	default:
		return unavailable(CauseQueueUnavailable, "the queue could not take the events; retry later", 5*time.Second, err)
	}
}

// mediaType checks the Content-Type against the accepted media types.
func mediaType(ct string, accepted map[string]bool) (string, error) {
	if ct == "" {
		if accepted[""] {
			return "", nil
		}
		return "", &Error{Status: http.StatusUnsupportedMediaType, Cause: CauseUnsupportedMedia,
			Message: "missing Content-Type; send application/json"}
	}
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil || !accepted[mt] {
		return "", &Error{Status: http.StatusUnsupportedMediaType, Cause: CauseUnsupportedMedia,
			Message: "unsupported Content-Type; send application/json, application/cloudevents+json or application/cloudevents-batch+json",
			Err:     fmt.Errorf("content type %q", ct)}
	}
	if cs, ok := params["charset"]; ok && !strings.EqualFold(cs, "utf-8") {
		return "", &Error{Status: http.StatusUnsupportedMediaType, Cause: CauseUnsupportedMedia,
			Message: "unsupported charset; send UTF-8", Err: fmt.Errorf("charset %q", cs)}
	}
	return mt, nil
}

// readBody reads the request body into buf, refusing more than limit bytes.
func readBody(c echo.Context, buf *bytes.Buffer, limit int64) error {
	req := c.Request()
	tooLarge := &Error{Status: http.StatusRequestEntityTooLarge, Cause: CauseBodyTooLarge,
		Message: fmt.Sprintf("request body larger than %d bytes", limit)}
	if req.ContentLength > limit {
		tooLarge.Err = fmt.Errorf("Content-Length %d", req.ContentLength)
		return tooLarge
	}
	if req.ContentLength > 0 {
		buf.Grow(int(req.ContentLength))
	}
	_, err := buf.ReadFrom(http.MaxBytesReader(c.Response(), req.Body, limit))
	var mbe *http.MaxBytesError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &mbe):
		tooLarge.Err = err
		return tooLarge
	default:
		return &Error{Status: http.StatusBadRequest, Cause: CauseMalformedBody,
			Message: "could not read the request body", Err: err}
	}
}

// parseError maps a schemas error to 400.
func parseError(err error) error {
	cause := CauseInvalidEvent
	if errors.Is(err, schemas.ErrMalformed) {
		cause = CauseMalformedBody
	}
	// Parser messages name positions and attributes only, never values, so
	// they are safe and useful to show.
	return &Error{Status: http.StatusBadRequest, Cause: cause, Message: err.Error(), Err: err}
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

const (
	eventsKey  = "hookbridge.events"
	outcomeKey = "hookbridge.outcome"

	outcomeAccepted  = "accepted"
	outcomeHandshake = "handshake"
	outcomeRejected  = "rejected"
	outcomeFailed    = "failed"
)

func setEvents(c echo.Context, n int) { c.Set(eventsKey, n) }

// setOutcome records a successful request that is not an event delivery,
// e.g. an Event Grid handshake, for metrics and the access log.
func setOutcome(c echo.Context, outcome, cause string) { c.Set(outcomeKey, [2]string{outcome, cause}) }

// observe records metrics and writes the access log line of every request;
// errors are rendered here, so the final status is known.
func (s *Server) observe(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		start := time.Now()
		err := next(c)
		var herr *Error
		if err != nil {
			herr = s.toError(err)
			s.render(c, herr)
		}
		path := c.Path()
		if path == "" {
			path = "unmatched"
		}
		status := c.Response().Status
		outcome, cause := outcomeAccepted, ""
		if oc, ok := c.Get(outcomeKey).([2]string); ok {
			outcome, cause = oc[0], oc[1]
		}
		if herr != nil {
			cause = herr.Cause
			outcome = outcomeRejected
			if herr.Status >= 500 || herr.Status == http.StatusTooManyRequests {
				outcome = outcomeFailed
			}
		}
		d := time.Since(start)
		s.metrics.requests.WithLabelValues(path, outcome, cause).Inc()
		s.metrics.duration.WithLabelValues(path).Observe(d.Seconds())
		attrs := []slog.Attr{
			slog.String("method", c.Request().Method),
			slog.String("route", path),
			slog.Int("status", status),
			slog.Duration("duration", d),
			slog.Int64("bytes_in", c.Request().ContentLength),
			slog.String("remote_ip", c.RealIP()),
		}
		if n, ok := c.Get(eventsKey).(int); ok {
			attrs = append(attrs, slog.Int("events", n))
		}
		if outcome == outcomeHandshake {
			attrs = append(attrs, slog.String("handshake", cause))
		}
		level := slog.LevelInfo
		if herr != nil {
			attrs = append(attrs, slog.String("cause", herr.Cause), slog.String("error_id", herr.id()))
			if herr.Err != nil {
				attrs = append(attrs, slog.String("error", herr.Err.Error()))
			}
			level = slog.LevelWarn
			if herr.Status >= 500 {
				level = slog.LevelError
			}
		}
		s.log.LogAttrs(c.Request().Context(), level, "request", attrs...)
		return nil
	}
}

// toError maps any handler error, Echo's own included, to an *Error.
func (s *Server) toError(err error) *Error {
	var he *echo.HTTPError
	if errors.As(err, &he) {
		switch he.Code {
		case http.StatusNotFound:
			return &Error{Status: he.Code, Cause: CauseNotFound, Message: "no such route; events go to POST /acs/callbacks or POST /eventgrid"}
		case http.StatusMethodNotAllowed:
			return &Error{Status: he.Code, Cause: CauseMethodNotAllowed, Message: "method not allowed on this route; use POST (and OPTIONS on /eventgrid)"}
		default:
			return &Error{Status: he.Code, Cause: "http_" + fmt.Sprint(he.Code), Message: http.StatusText(he.Code), Err: err}
		}
	}
	return asError(err)
}

// render writes the small JSON error body and headers.
func (s *Server) render(c echo.Context, e *Error) {
	if c.Response().Committed {
		return
	}
	h := c.Response().Header()
	if e.RetryAfter > 0 {
		h.Set("Retry-After", retryAfterValue(e.RetryAfter))
	}
	if e.Challenge != "" {
		h.Set("WWW-Authenticate", e.Challenge)
	}
	if c.Request().Method == http.MethodHead {
		c.NoContent(e.Status)
		return
	}
	c.JSON(e.Status, map[string]string{"error": e.Message, "id": e.id()})
}

// handleError is Echo's error handler, for errors raised outside observe.
func (s *Server) handleError(err error, c echo.Context) {
	s.render(c, s.toError(err))
}

// id returns the error's ID, assigning one on first use.
func (e *Error) id() string {
	if e.errorID == "" {
		e.errorID = newErrorID()
	}
	return e.errorID
}
