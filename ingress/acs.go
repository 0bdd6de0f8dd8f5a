package ingress

import (
	"context"
	"log/slog"
	"net/http"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// DefaultACSOIDCURL is Call Automation's OpenID Connect discovery document.
const DefaultACSOIDCURL = "https://acscallautomation.communication.azure.com/calling/.well-known/acsopenidconfiguration"

// MaxTokenBytes is the longest bearer token accepted; longer ones are refused
// before any parsing.
const MaxTokenBytes = 8 << 10

// MaxLeeway is the most clock skew a JWT verifier may tolerate.
const MaxLeeway = 60 * time.Second

// ACSConfig configures the Call Automation JWT verifier.
type ACSConfig struct {
	// Audiences are the ACS resources' immutable resource IDs; a token's aud
	// must equal one of them. Required.
	Audiences []string
	// OIDCURL is the discovery document; the expected issuer is its
	// "issuer". Default DefaultACSOIDCURL. Plain http is allowed only to a
	// loopback host.
	OIDCURL string
	// Leeway is the clock skew allowed on exp, nbf and iat. Default 30s, at
	// most MaxLeeway.
	Leeway time.Duration
	// RefreshInterval is the background JWKS refresh period. Default 1h.
	RefreshInterval time.Duration
	// UnknownKIDRefreshEvery bounds JWKS refreshes caused by tokens with an
	// unknown kid to one per period. Default 30s.
	UnknownKIDRefreshEvery time.Duration
	// HTTPClient fetches discovery and keys. Default: 10s timeout.
	HTTPClient *http.Client
	Logger     *slog.Logger
}

// Validate reports the first invalid setting.
func (c ACSConfig) Validate() error {
	return jwtSettings{
		verifier:     "acs verifier",
		audiences:    c.Audiences,
		audienceHint: "set --acs-audience to your ACS resource's immutable resource ID",
		leeway:       c.Leeway,
		url:          c.OIDCURL,
		urlFlag:      "--acs-oidc-url",
	}.check()
}

// ACSVerifier checks the JWT Call Automation puts in the Authorization
// header of every callback: RS256 only, signed by a key of the issuer's JWKS
// (never one named by the token), exp required, nbf and iat checked with
// bounded leeway, issuer and audience exact.
type ACSVerifier struct {
	cfg    ACSConfig
	keys   *keySource
	parser *jwt.Parser
}

// NewACSVerifier returns the verifier. Its keys load in Run.
func NewACSVerifier(cfg ACSConfig) (*ACSVerifier, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.OIDCURL == "" {
		cfg.OIDCURL = DefaultACSOIDCURL
	}
	if cfg.Leeway == 0 {
		cfg.Leeway = defaultLeeway
	}
	keys, err := newKeySource(keySourceConfig{
		name:            VerifierACS,
		discoveryURL:    cfg.OIDCURL,
		client:          cfg.HTTPClient,
		refreshInterval: cfg.RefreshInterval,
		unknownKIDEvery: cfg.UnknownKIDRefreshEvery,
		log:             cfg.Logger,
	})
	if err != nil {
		return nil, err
	}
	return &ACSVerifier{
		cfg:    cfg,
		keys:   keys,
		parser: newParser(cfg.Leeway, cfg.Audiences),
	}, nil
}

// Name implements Verifier.
func (v *ACSVerifier) Name() string { return VerifierACS }

// Ready reports whether the signing keys are loaded.
func (v *ACSVerifier) Ready() bool { return v.keys.ready() }

// Run loads the signing keys and keeps them fresh until ctx ends.
func (v *ACSVerifier) Run(ctx context.Context) error { return v.keys.Run(ctx) }

// Verify checks the request's bearer token.
func (v *ACSVerifier) Verify(r *http.Request) (Credential, error) {
	var claims jwt.RegisteredClaims
	raw, err := verifyJWT(r, v.keys, v.parser, &claims, func(iss string, set *keySet) bool { return iss == set.issuer })
	if err != nil {
		return Credential{}, err
	}
	return Credential{Token: raw, Expires: claims.ExpiresAt.Add(v.cfg.Leeway), JTI: claims.ID}, nil
}

func (*ACSVerifier) bearer() {}
