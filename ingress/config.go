package ingress

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

// Config configures the public listener. Zero values take the defaults
// noted.
type Config struct {
	// Publisher receives the messages of every accepted request. Required.
	Publisher Publisher
	// ACSVerifiers guard POST /acs/callbacks; every one must pass. The route
	// is served only when at least one is configured (or Insecure is set).
	ACSVerifiers []Verifier
	// EventGridVerifiers guard POST and OPTIONS /eventgrid, likewise.
	EventGridVerifiers []Verifier
	// ReplayDefence is how the Call Automation replay defence treats a
	// token that comes back with another body. Default ReplayAuto. It
	// applies when an /acs/callbacks verifier yields bearer tokens.
	ReplayDefence ReplayDefence
	// ReplayCacheSize bounds the replay defence: how many live tokens are
	// remembered with the bodies they delivered. Default
	// DefaultReplayCacheSize; negative turns the defence off, as ReplayOff.
	ReplayCacheSize int
	// EventGridAllowedOrigins are the origins the CloudEvents abuse-protection
	// handshake consents to ("*" for any). Default eventgrid.azure.net.
	EventGridAllowedOrigins []string
	// EventGridAllowedRate is the WebHook-Allowed-Rate answered to the
	// handshake: requests per minute, or "*". Default "*".
	EventGridAllowedRate string
	// RateLimit is the requests per second allowed per client IP, with
	// bursts of RateBurst (default: one second's worth); zero turns
	// per-client limiting off (the default: ACS and Event Grid deliver from
	// a few shared Azure addresses), and then RateBurst must be zero too.
	// Excess requests get 429 with Retry-After.
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
	// MaxMessageBytes is the largest message body the queue takes (0: no
	// limit known). An event that normalizes to more goes to the
	// dead-letter queue as MalformedEvent, as it was received, and the
	// rest of its request is queued: a verified sender's event is never
	// refused for its size once its body fit MaxBodyBytes. MaxBodyBytes
	// must not exceed it, so that an element kept as received fits.
	MaxMessageBytes int
	// MaxBodyBytesInFlight bounds the request bodies being read, parsed and
	// committed at once, across all requests (a body counts its
	// Content-Length, or MaxBodyBytes when it has none): the memory the
	// request path can hold. A request that would exceed it waits, up to
	// EnqueueTimeout, then gets 503. Default
	// max(DefaultMaxBodyBytesInFlight, MaxBodyBytes); at least MaxBodyBytes.
	MaxBodyBytesInFlight int64
	// MaxHeaderBytes caps request headers. Default 64 KiB.
	MaxHeaderBytes int
	// ReadHeaderTimeout, ReadTimeout, WriteTimeout and IdleTimeout bound a
	// connection. Defaults 5s, 30s, 40s, 120s.
	ReadHeaderTimeout time.Duration
	ReadTimeout       time.Duration
	WriteTimeout      time.Duration
	IdleTimeout       time.Duration
	// MaxConcurrentRequests caps requests in progress; more wait for a
	// slot up to EnqueueTimeout, then get 503. Default 1024.
	MaxConcurrentRequests int
	// EnqueueTimeout bounds the wait for the queue; past it the sender gets
	// 503. Default 10s.
	EnqueueTimeout time.Duration
	// DrainDelay is how long Serve keeps serving once its context ends,
	// with readiness already failing, so that load balancers stop sending
	// before the listener closes. Default 0: stop accepting at once.
	DrainDelay time.Duration
	// ShutdownTimeout is how long Serve then waits for requests in
	// progress. Default 30s.
	ShutdownTimeout time.Duration
	// Logger receives access and error logs. Default: discard.
	Logger *slog.Logger
	// Registerer receives the ingress metrics. Default: none.
	Registerer prometheus.Registerer
	// TracerProvider, when set, traces every request on an event route (see
	// the package documentation: a server span, its verification, and the
	// send to the queue, whose context each message and event carries).
	// Default nil: tracing off, at the cost of a nil check per request.
	TracerProvider trace.TracerProvider
	// TraceQueue names the queue in the send spans ("send <TraceQueue>"),
	// and TraceQueueAttributes describe it (messaging.system,
	// messaging.destination.name, server.address). Used with
	// TracerProvider only.
	TraceQueue           string
	TraceQueueAttributes []attribute.KeyValue
}

// Defaults.
const (
	DefaultMaxBodyBytes          = 1 << 20
	DefaultMaxBodyBytesInFlight  = 16 << 20
	DefaultMaxHeaderBytes        = 64 << 10
	DefaultMaxConcurrentRequests = 1024
	DefaultEnqueueTimeout        = 10 * time.Second
	DefaultShutdownTimeout       = 30 * time.Second
	DefaultReplayCacheSize       = 500_000
	DefaultEventGridOrigin       = "eventgrid.azure.net"
	// MaxBodyBytesLimit is the largest MaxBodyBytes accepted.
	MaxBodyBytesLimit = 64 << 20
)

// ReplayDefence says what the Call Automation replay defence does with a
// token that comes back with a different body. The same token with the same
// body is a sender's retry in every mode but off: 200, not queued twice.
type ReplayDefence string

// Replay defence modes.
const (
	// ReplayAuto refuses (401) a token reused with another body only when
	// the token carries a unique identifier (jti): such a token is never
	// issued twice. Without a jti two genuine events can carry
	// byte-identical tokens (RS256 is deterministic, and Microsoft does not
	// document what makes two tokens differ), so the request is accepted,
	// counted (cause token_reused) and logged with the token's digest.
	ReplayAuto ReplayDefence = "auto"
	// ReplayStrict refuses every token reused with another body.
	ReplayStrict ReplayDefence = "strict"
	// ReplayOff skips the check.
	ReplayOff ReplayDefence = "off"
)

// ParseReplayDefence reads a replay defence mode.
func ParseReplayDefence(s string) (ReplayDefence, error) {
	switch d := ReplayDefence(s); d {
	case ReplayAuto, ReplayStrict, ReplayOff:
		return d, nil
	}
	return "", fmt.Errorf("replay defence %q: use auto, strict or off", s)
}

// Validate reports the first invalid setting.
func (c Config) Validate() error {
	switch {
	case c.Publisher == nil:
		return errors.New("ingress: no publisher (queue) configured")
	case len(c.ACSVerifiers) == 0 && len(c.EventGridVerifiers) == 0 && !c.InsecureAllowUnauthenticated:
		return errors.New("ingress: no verifier configured for any route; configure one (--acs-audience, --eventgrid-entra-tenant with --eventgrid-entra-audience, or API keys) or, for development only, pass --insecure-allow-unauthenticated")
	case c.ReplayDefence != "" && c.ReplayDefence != ReplayAuto && c.ReplayDefence != ReplayStrict && c.ReplayDefence != ReplayOff:
		return fmt.Errorf("ingress: replay defence %q: use auto, strict or off", c.ReplayDefence)
	case c.ReplayCacheSize > MaxReplayCacheSize:
		return fmt.Errorf("ingress: --replay-cache-size %d is above the most it takes (%d); each token costs about 110 bytes, so size it for the tokens of the last few minutes", c.ReplayCacheSize, MaxReplayCacheSize)
	case c.RateLimit < 0 || c.RateBurst < 0:
		return fmt.Errorf("ingress: rate limit %g/s burst %d: must not be negative", c.RateLimit, c.RateBurst)
	case c.RateBurst > 0 && c.RateLimit == 0:
		return fmt.Errorf("ingress: --rate-burst %d without --rate-limit does nothing: set --rate-limit (requests per second per client) too, or drop --rate-burst", c.RateBurst)
	case c.EventGridAllowedRate != "" && c.EventGridAllowedRate != "*" && !isPositiveInt(c.EventGridAllowedRate):
		return fmt.Errorf("ingress: Event Grid allowed rate %q: use a positive number of requests per minute or *", c.EventGridAllowedRate)
	case c.MaxBodyBytes < 0 || c.MaxBodyBytes > MaxBodyBytesLimit:
		return fmt.Errorf("ingress: max body %d bytes: must be between 1 and %d", c.MaxBodyBytes, MaxBodyBytesLimit)
	case c.MaxMessageBytes < 0:
		return fmt.Errorf("ingress: max message %d bytes: must not be negative (0: no limit known)", c.MaxMessageBytes)
	case c.MaxMessageBytes > 0 && c.maxBody() > int64(c.MaxMessageBytes):
		return fmt.Errorf("ingress: max body %d bytes is more than the queue's largest message (%d bytes): an event that fills a body could be kept nowhere, not even in the dead-letter queue; lower the max body size (--max-body-bytes) or raise the queue's (max_message_bytes)",
			c.maxBody(), c.MaxMessageBytes)
	case c.MaxBodyBytesInFlight < 0 || (c.MaxBodyBytesInFlight > 0 && c.MaxBodyBytesInFlight < c.maxBody()):
		return fmt.Errorf("ingress: max body bytes in flight %d: must be at least the max body size (%d)", c.MaxBodyBytesInFlight, c.maxBody())
	case c.MaxHeaderBytes < 0:
		return fmt.Errorf("ingress: max header bytes %d: must not be negative", c.MaxHeaderBytes)
	case c.ReadHeaderTimeout < 0 || c.ReadTimeout < 0 || c.WriteTimeout < 0 || c.IdleTimeout < 0:
		return errors.New("ingress: timeouts must not be negative")
	case c.MaxConcurrentRequests < 0:
		return fmt.Errorf("ingress: max concurrent requests %d: must not be negative", c.MaxConcurrentRequests)
	case c.EnqueueTimeout < 0 || c.ShutdownTimeout < 0 || c.DrainDelay < 0:
		return errors.New("ingress: enqueue timeout, drain delay and shutdown timeout must not be negative")
	}
	return nil
}

func (c *Config) setDefaults() {
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if c.MaxBodyBytesInFlight == 0 {
		c.MaxBodyBytesInFlight = max(DefaultMaxBodyBytesInFlight, c.MaxBodyBytes)
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
		c.ShutdownTimeout = DefaultShutdownTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.ReplayDefence == "" {
		c.ReplayDefence = ReplayAuto
	}
	if c.ReplayCacheSize == 0 {
		c.ReplayCacheSize = DefaultReplayCacheSize
	}
	if c.ReplayCacheSize < 0 {
		c.ReplayDefence = ReplayOff
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

// maxBody is MaxBodyBytes with its default applied.
func (c Config) maxBody() int64 {
	if c.MaxBodyBytes == 0 {
		return DefaultMaxBodyBytes
	}
	return c.MaxBodyBytes
}

func isPositiveInt(s string) bool {
	n, err := strconv.Atoi(s)
	return err == nil && n > 0
}
