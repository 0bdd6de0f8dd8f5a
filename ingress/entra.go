package ingress

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/golang-jwt/jwt/v5"
	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// Microsoft Entra defaults.
const (
	// DefaultEntraAuthority is the public cloud's Entra authority.
	DefaultEntraAuthority = "https://login.microsoftonline.com"
	// EventGridAppID is the application ID of the Microsoft.EventGrid
	// service principal in the public cloud (Azure Government uses
	// 54316b56-3481-47f9-8f30-0300f5542a7b).
	EventGridAppID = "4962773b-9cdb-44cf-a8bf-237846a00ab7"
	// DefaultEntraCacheSize bounds the verified-token cache.
	DefaultEntraCacheSize = 10_000
)

// EntraConfig configures the Microsoft Entra verifier for Event Grid's
// secured webhook delivery.
type EntraConfig struct {
	// Tenant is the Entra tenant of the webhook's application (its ID, or a
	// domain name such as contoso.onmicrosoft.com). Required.
	Tenant string
	// Audiences are the webhook application's client ID or application ID
	// URI, as set on the event subscription; a token's aud must equal one.
	// Required.
	Audiences []string
	// AppID is the caller that must appear in appid (v1 tokens) or azp (v2
	// tokens). Default EventGridAppID.
	AppID string
	// Authority is the Entra authority; discovery is
	// <Authority>/<Tenant>/v2.0/.well-known/openid-configuration. Default
	// DefaultEntraAuthority. Plain http is allowed only to a loopback host.
	Authority string
	// Leeway is the clock skew allowed on exp, nbf and iat. Default 30s, at
	// most MaxLeeway.
	Leeway time.Duration
	// CacheSize bounds the cache of verified tokens (Event Grid reuses one
	// token for many deliveries). Default DefaultEntraCacheSize; negative
	// turns the cache off.
	CacheSize int
	// RefreshInterval and UnknownKIDRefreshEvery are as in ACSConfig.
	RefreshInterval        time.Duration
	UnknownKIDRefreshEvery time.Duration
	HTTPClient             *http.Client
	Logger                 *slog.Logger
}

// Validate reports the first invalid setting.
func (c EntraConfig) Validate() error {
	if strings.TrimSpace(c.Tenant) == "" || strings.ContainsAny(c.Tenant, "/?#") {
		return errors.New("entra verifier: set --eventgrid-entra-tenant to the tenant ID of the webhook's Entra application")
	}
	return jwtSettings{
		verifier:     "entra verifier",
		audiences:    c.Audiences,
		audienceHint: "set --eventgrid-entra-audience to the webhook application's client ID or application ID URI",
		leeway:       c.Leeway,
		url:          c.Authority,
		urlFlag:      "--entra-authority",
	}.check()
}

// EntraVerifier checks the Microsoft Entra token Event Grid sends with every
// delivery to a secured webhook: RS256, signed by a key of the tenant's
// JWKS, issued by the tenant (v2 issuer from the discovery document, or the
// v1 issuer https://sts.windows.net/<tenant>/), for the configured audience,
// to Event Grid's application (appid or azp), with tid = the tenant.
//
// Event Grid reuses one token for many deliveries, so a successful
// verification is cached by the token's digest until the token expires; a
// cached token skips the RSA work. Failures are never cached.
type EntraVerifier struct {
	cfg    EntraConfig
	keys   *keySource
	parser *jwt.Parser
	cache  *tokenCache
}

// NewEntraVerifier returns the verifier. Its keys load in Run.
func NewEntraVerifier(cfg EntraConfig) (*EntraVerifier, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Authority == "" {
		cfg.Authority = DefaultEntraAuthority
	}
	if cfg.AppID == "" {
		cfg.AppID = EventGridAppID
	}
	if cfg.Leeway == 0 {
		cfg.Leeway = defaultLeeway
	}
	if cfg.CacheSize == 0 {
		cfg.CacheSize = DefaultEntraCacheSize
	}
	discovery := strings.TrimSuffix(cfg.Authority, "/") + "/" + url.PathEscape(cfg.Tenant) + "/v2.0/.well-known/openid-configuration"
	keys, err := newKeySource(keySourceConfig{
		name:            VerifierEntra,
		discoveryURL:    discovery,
		client:          cfg.HTTPClient,
		refreshInterval: cfg.RefreshInterval,
		unknownKIDEvery: cfg.UnknownKIDRefreshEvery,
		log:             cfg.Logger,
	})
	if err != nil {
		return nil, err
	}
	v := &EntraVerifier{
		cfg:    cfg,
		keys:   keys,
		parser: newParser(cfg.Leeway, cfg.Audiences),
	}
	if cfg.CacheSize > 0 {
		v.cache = newTokenCache(cfg.CacheSize)
	}
	return v, nil
}

// Name implements Verifier.
func (v *EntraVerifier) Name() string { return VerifierEntra }

// Ready reports whether the signing keys are loaded.
func (v *EntraVerifier) Ready() bool { return v.keys.ready() }

// Run loads the signing keys and keeps them fresh until ctx ends.
func (v *EntraVerifier) Run(ctx context.Context) error { return v.keys.Run(ctx) }

func (*EntraVerifier) bearer() {}

type entraClaims struct {
	jwt.RegisteredClaims
	AppID    string `json:"appid"`
	AZP      string `json:"azp"`
	TenantID string `json:"tid"`
}

// Verify checks the request's Entra bearer token.
func (v *EntraVerifier) Verify(r *http.Request) (Credential, error) {
	raw, err := bearerToken(r)
	if err != nil {
		return Credential{}, err
	}
	now := time.Now()
	var key [32]byte
	if v.cache != nil {
		// The token's bytes in place: Sum256 only reads them, and a copy
		// of a token of a kilobyte or two was the cached request's largest
		// allocation.
		key = sha256.Sum256(unsafe.Slice(unsafe.StringData(raw), len(raw)))
		if exp, ok := v.cache.get(key, now); ok {
			return Credential{Expires: exp}, nil
		}
	}
	var claims entraClaims
	var tenantID string
	if _, err := verifyJWT(r, v.keys, v.parser, &claims, func(iss string, set *keySet) bool {
		tenantID = tenantOf(set.issuer)
		return iss == set.issuer || (tenantID != "" && iss == "https://sts.windows.net/"+tenantID+"/")
	}); err != nil {
		return Credential{}, err
	}
	if claims.TenantID == "" || claims.TenantID != tenantID {
		return Credential{}, unauthorized(CauseWrongTenant, "token is from another tenant", fmt.Errorf("tid %q, want %q", claims.TenantID, tenantID))
	}
	caller := claims.AZP // v2
	if strings.HasPrefix(claims.Issuer, "https://sts.windows.net/") {
		caller = claims.AppID // v1
	}
	if caller != v.cfg.AppID {
		return Credential{}, unauthorized(CauseWrongCaller, "token was not issued to Event Grid", fmt.Errorf("caller app %q, want %q", caller, v.cfg.AppID))
	}
	exp := claims.ExpiresAt.Time
	if v.cache != nil {
		v.cache.put(key, exp)
	}
	return Credential{Expires: exp}, nil
}

// tenantOf extracts the tenant ID from a v2 issuer
// (https://login.microsoftonline.com/<tenant>/v2.0).
func tenantOf(issuer string) string {
	u, err := url.Parse(issuer)
	if err != nil {
		return ""
	}
	parts := strings.Split(strings.Trim(u.Path, "/"), "/")
	if len(parts) < 2 || parts[len(parts)-1] != "v2.0" {
		return ""
	}
	return parts[len(parts)-2]
}

// tokenCache remembers verified tokens by digest until they expire, for at
// most max tokens: an LRU (hashicorp/golang-lru's simplelru) forgets the
// least recently used token when a new one arrives.
type tokenCache struct {
	mu  sync.Mutex
	lru *simplelru.LRU[[32]byte, time.Time]
}

func newTokenCache(max int) *tokenCache {
	lru, _ := simplelru.NewLRU[[32]byte, time.Time](max, nil) // max > 0: no error
	return &tokenCache{lru: lru}
}

// get reports whether key was verified and has not expired at now. There is
// no leeway here: past exp the token is verified afresh (and then judged
// with the parser's leeway).
func (c *tokenCache) get(key [32]byte, now time.Time) (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	exp, ok := c.lru.Get(key)
	if !ok {
		return time.Time{}, false
	}
	if !now.Before(exp) {
		c.lru.Remove(key)
		return time.Time{}, false
	}
	return exp, true
}

func (c *tokenCache) put(key [32]byte, exp time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lru.Add(key, exp)
}
