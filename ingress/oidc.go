package ingress

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/MicahParks/keyfunc/v3"
	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/time/rate"

	"github.com/hookbridge/hookbridge/relay"
)

// keySourceConfig configures a keySource.
type keySourceConfig struct {
	// name labels logs and metrics, e.g. "acs-jwt".
	name string
	// discoveryURL is the OpenID Connect discovery document.
	discoveryURL string
	// client fetches the discovery document and the JWKS.
	client *http.Client
	// refreshInterval is the background JWKS refresh period.
	refreshInterval time.Duration
	// unknownKIDEvery bounds refreshes triggered by tokens with an unknown
	// kid: at most one per period.
	unknownKIDEvery time.Duration
	log             *slog.Logger
}

// keySet is what a successful discovery yields.
type keySet struct {
	issuer  string
	jwksURI string
	kf      keyfunc.Keyfunc

	// kids is a snapshot of the loaded key IDs, at most a second old, so
	// the unknown-kid check costs a map lookup instead of a copy of the
	// key set per request.
	kids atomic.Pointer[kidSnapshot]
}

type kidSnapshot struct {
	at   time.Time
	kids map[string]bool
}

// keySource holds an issuer's signing keys: OIDC discovery, then the JWKS
// through keyfunc (refreshed in the background, refreshed on an unknown kid
// at a bounded rate, kept when the endpoint fails). Until the first
// discovery and JWKS fetch succeed it has no keys, and Run keeps retrying.
type keySource struct {
	cfg     keySourceConfig
	current atomic.Pointer[keySet]
	limiter *rate.Limiter
	loaded  func(bool) // metrics hook, may be nil

	mu       sync.Mutex
	lastFail error
}

func newKeySource(cfg keySourceConfig) (*keySource, error) {
	if err := checkFetchURL(cfg.discoveryURL); err != nil {
		return nil, fmt.Errorf("%s: discovery URL: %w", cfg.name, err)
	}
	if cfg.client == nil {
		cfg.client = &http.Client{Timeout: 10 * time.Second}
	}
	if cfg.refreshInterval <= 0 {
		cfg.refreshInterval = time.Hour
	}
	if cfg.unknownKIDEvery <= 0 {
		cfg.unknownKIDEvery = 30 * time.Second
	}
	if cfg.log == nil {
		cfg.log = slog.New(slog.DiscardHandler)
	}
	return &keySource{cfg: cfg, limiter: rate.NewLimiter(rate.Every(cfg.unknownKIDEvery), 1)}, nil
}

// checkFetchURL allows https URLs, and http only to a loopback host.
func checkFetchURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return fmt.Errorf("%q is not an absolute URL", raw)
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		if isLoopback(u.Hostname()) {
			return nil
		}
		return fmt.Errorf("%q: plain http is allowed only to a loopback address; use https", raw)
	default:
		return fmt.Errorf("%q: scheme must be https", raw)
	}
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// ready reports whether keys were loaded.
func (s *keySource) ready() bool { return s.current.Load() != nil }

// Run discovers the issuer and loads its keys, retrying with backoff until it
// succeeds, then keeps the keys refreshed until ctx ends. It returns nil when
// ctx ends.
func (s *keySource) Run(ctx context.Context) error {
	for attempt := 1; ; attempt++ {
		set, cancel, err := s.load(ctx)
		if err == nil {
			s.current.Store(set)
			if s.loaded != nil {
				s.loaded(true)
			}
			s.cfg.log.Info("signing keys loaded", "verifier", s.cfg.name, "issuer", set.issuer, "jwks_uri", set.jwksURI)
			<-ctx.Done()
			cancel() // stops keyfunc's refresh goroutine
			return nil
		}
		s.mu.Lock()
		s.lastFail = err
		s.mu.Unlock()
		wait := relay.Backoff(attempt, time.Second, 30*time.Second)
		s.cfg.log.Error("cannot load signing keys; requests that need them get 503 until they load",
			"verifier", s.cfg.name, "error", err, "retry_in", wait)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

type discoveryDoc struct {
	Issuer  string `json:"issuer"`
	JWKSURI string `json:"jwks_uri"`
}

// load fetches the discovery document and the JWKS. On success the returned
// cancel stops the background refresh.
func (s *keySource) load(ctx context.Context) (*keySet, context.CancelFunc, error) {
	doc, err := s.discover(ctx)
	if err != nil {
		return nil, nil, err
	}
	kctx, cancel := context.WithCancel(ctx)
	noErrorFirst := false
	kf, err := keyfunc.NewDefaultOverrideCtx(kctx, []string{doc.JWKSURI}, keyfunc.Override{
		Client:                    s.cfg.client,
		HTTPTimeout:               10 * time.Second,
		NoErrorReturnFirstHTTPReq: &noErrorFirst,
		// The keys all come from the JWKS URL (no given keys): look there
		// first, so a known kid is not first looked up, and an error built,
		// in the empty given set on every verification.
		PrioritizeHTTP:  true,
		RefreshInterval: s.cfg.refreshInterval,
		// Every unknown kid may refresh: Verify gates refreshes with its own
		// limiter first, so it can tell "spent" (503) from "unknown" (401).
		RefreshUnknownKID: rate.NewLimiter(rate.Inf, 1),
		// jwkset bounds the limiter wait and the refresh itself with this
		// one deadline; with an infinite rate it bounds just the refresh.
		RateLimitWaitMax: 5 * time.Second,
		RefreshErrorHandlerFunc: func(u string) func(context.Context, error) {
			return func(ctx context.Context, err error) {
				if p, ok := ctx.Value(probeKey{}).(*refreshProbe); ok {
					p.failed.Store(true)
				}
				s.cfg.log.Warn("JWKS refresh failed; keeping the keys already loaded", "verifier", s.cfg.name, "jwks_uri", u, "error", err)
			}
		},
	})
	if err != nil {
		cancel()
		return nil, nil, fmt.Errorf("load JWKS %s: %w", doc.JWKSURI, err)
	}
	return &keySet{issuer: doc.Issuer, jwksURI: doc.JWKSURI, kf: kf}, cancel, nil
}

func (s *keySource) discover(ctx context.Context) (discoveryDoc, error) {
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, s.cfg.discoveryURL, nil)
	if err != nil {
		return discoveryDoc{}, fmt.Errorf("discovery %s: %w", s.cfg.discoveryURL, err)
	}
	resp, err := s.cfg.client.Do(req)
	if err != nil {
		return discoveryDoc{}, fmt.Errorf("discovery %s: %w", s.cfg.discoveryURL, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return discoveryDoc{}, fmt.Errorf("discovery %s: status %s", s.cfg.discoveryURL, resp.Status)
	}
	var doc discoveryDoc
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&doc); err != nil {
		return discoveryDoc{}, fmt.Errorf("discovery %s: decode: %w", s.cfg.discoveryURL, err)
	}
	if doc.Issuer == "" || doc.JWKSURI == "" {
		return discoveryDoc{}, fmt.Errorf("discovery %s: the document has no issuer or jwks_uri", s.cfg.discoveryURL)
	}
	if err := checkFetchURL(doc.JWKSURI); err != nil {
		return discoveryDoc{}, fmt.Errorf("discovery %s: jwks_uri: %w", s.cfg.discoveryURL, err)
	}
	return doc, nil
}

type probeKey struct{}

// refreshProbe records, for one verification, whether a JWKS refresh failed.
type refreshProbe struct{ failed atomic.Bool }

// headerKeyParams are JWT header parameters that carry or point to a key.
// Keys come only from the configured JWKS, so a token naming its own key is
// refused outright.
var headerKeyParams = []string{"jku", "x5u", "jwk", "x5c"}

var (
	errHeaderKey  = errors.New("token header supplies its own key")
	errUnknownKID = errors.New("token signed with an unknown key")
)

// keyfunc returns the jwt.Keyfunc for one verification. Before the JWKS is
// refreshed for an unknown kid, the refresh budget is checked: a spent budget
// yields a 503 (the token may be fine), a refresh that fails yields a 503
// too, and a kid still unknown after a fresh refresh yields a 401.
func (s *keySource) keyfunc(ctx context.Context, set *keySet) (jwt.Keyfunc, *refreshProbe) {
	probe := &refreshProbe{}
	pctx := context.WithValue(ctx, probeKey{}, probe)
	inner := set.kf.KeyfuncCtx(pctx)
	return func(t *jwt.Token) (any, error) {
		for _, p := range headerKeyParams {
			if _, ok := t.Header[p]; ok {
				return nil, fmt.Errorf("%w (%s)", errHeaderKey, p)
			}
		}
		if kid, ok := t.Header["kid"].(string); ok && !s.known(pctx, set, kid) {
			if !s.limiter.Allow() {
				return nil, errRefreshBudget
			}
		}
		key, err := inner(t)
		if errors.Is(err, jwkset.ErrKeyNotFound) {
			if probe.failed.Load() {
				return nil, fmt.Errorf("%w: %w", errKeysUnreachable, err)
			}
			return nil, fmt.Errorf("%w: %w", errUnknownKID, err)
		}
		return key, err
	}, probe
}

var (
	errRefreshBudget   = errors.New("unknown kid and the JWKS refresh budget is spent")
	errKeysUnreachable = errors.New("unknown kid and the JWKS endpoint could not be reached")
)

// known reports whether kid is among the loaded keys, without refreshing.
// A recent snapshot answers yes; a no is confirmed against the key set.
func (s *keySource) known(ctx context.Context, set *keySet, kid string) bool {
	if snap := set.kids.Load(); snap != nil && time.Since(snap.at) < time.Second && snap.kids[kid] {
		return true
	}
	all, err := set.kf.Storage().KeyReadAll(ctx)
	if err != nil {
		return false
	}
	snap := &kidSnapshot{at: time.Now(), kids: make(map[string]bool, len(all))}
	for _, j := range all {
		snap.kids[j.Marshal().KID] = true
	}
	set.kids.Store(snap)
	return snap.kids[kid]
}

// refreshRetryAfter is how long until an unknown-kid refresh is allowed again.
func (s *keySource) refreshRetryAfter() time.Duration {
	r := s.limiter.Reserve()
	d := r.Delay()
	r.Cancel()
	return max(d, time.Second)
}
