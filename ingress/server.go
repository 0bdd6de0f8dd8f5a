package ingress

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/labstack/echo/v4"
	"golang.org/x/sync/semaphore"

	"github.com/hookbridge/hookbridge/relay"
	"github.com/hookbridge/hookbridge/schemas"
)

// Publisher durably enqueues the messages of one request. Publish returns
// nil only once the queue has every message (each one either for consumers
// or, when its DeadLetterReason is set, in the dead-letter queue); an error
// wrapping relay.ErrMessageTooLarge means a message can never fit, anything
// else that the sender should retry. If ctx ends first the outcome is
// unknown, and Publish may still read msgs afterwards: the caller must not
// reuse them. *relay.Batcher implements it.
type Publisher interface {
	Publish(ctx context.Context, msgs []relay.Message) error
}

// HoldingPublisher is a Publisher that says when it no longer holds a
// request's messages (relay.Batcher does): the request's share of
// MaxBodyBytesInFlight is released then, not when the request gives up
// waiting, so a stalled queue cannot pile up more than the bound.
type HoldingPublisher interface {
	Publisher
	PublishHolding(ctx context.Context, msgs []relay.Message, release func()) error
}

// Routes of the public listener.
const (
	PathACSCallbacks = "/acs/callbacks"
	PathEventGrid    = "/eventgrid"
	PathHealthz      = "/healthz"
)

// route is one served event route.
type route struct {
	path      string
	name      string // schemas.Route*
	verifiers []Verifier
	verifier  string // names joined by "+", or "insecure"
	replay    *replayGuard
	metrics   routeMetrics
}

// Server is the public listener: Echo with the event routes.
type Server struct {
	cfg      Config
	log      *slog.Logger
	echo     *echo.Echo
	metrics  *metrics
	routes   []*route
	slots    chan struct{}
	bodies   *semaphore.Weighted // MaxBodyBytesInFlight
	limiter  *clientLimiter
	scratch  sync.Pool // *scratch
	draining atomic.Bool
	trace    *tracer // nil: tracing off
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
		bodies:  semaphore.NewWeighted(cfg.MaxBodyBytesInFlight),
		scratch: sync.Pool{New: func() any { return new(scratch) }},
		trace:   newTracer(cfg.TracerProvider, cfg.TraceQueue, cfg.TraceQueueAttributes),
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
	if cfg.RateLimit > 0 {
		s.limiter = newClientLimiter(cfg.RateLimit, cfg.RateBurst)
	}
	e.GET(PathHealthz, s.chain(func(c echo.Context) error { return c.String(http.StatusOK, "ok\n") }))

	if r := s.newRoute(PathACSCallbacks, schemas.RouteACSCallbacks, cfg.ACSVerifiers); r != nil {
		if cfg.ReplayDefence != ReplayOff && slices.ContainsFunc(r.verifiers, isBearer) {
			r.replay = newReplayGuard(cfg.ReplayCacheSize, cfg.ReplayDefence, s.metrics.replayEvictions, s.log)
			s.metrics.watchReplay(r.replay)
		}
		e.POST(r.path, s.chain(func(c echo.Context) error {
			return s.ingest(c, r, acsMediaTypes, acsParse)
		}))
	}
	if r := s.newRoute(PathEventGrid, schemas.RouteEventGrid, cfg.EventGridVerifiers); r != nil {
		e.POST(r.path, s.chain(func(c echo.Context) error { return s.eventGrid(c, r) }))
		e.OPTIONS(r.path, s.chain(func(c echo.Context) error { return s.eventGridOptions(c, r) }))
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
	r := &route{path: path, name: name, verifiers: verifiers, metrics: s.metrics.forRoute(path, name)}
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

// Ready reports whether every verifier can decide and the server is not
// shutting down.
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
