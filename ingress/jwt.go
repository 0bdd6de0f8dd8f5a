package ingress

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// newParser returns the parser of the JWT verifiers: RS256 only, exp
// required, iat and nbf checked with leeway, aud one of audiences.
func newParser(leeway time.Duration, audiences []string) *jwt.Parser {
	return jwt.NewParser(
		jwt.WithValidMethods([]string{jwt.SigningMethodRS256.Alg()}),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithLeeway(leeway),
		jwt.WithAudience(audiences...),
	)
}

// defaultLeeway is the JWT verifiers' clock skew when their configuration
// sets none.
const defaultLeeway = 30 * time.Second

// jwtSettings are the settings both JWT verifiers' configurations share,
// checked the same way for both.
type jwtSettings struct {
	verifier     string // names the verifier in messages
	audiences    []string
	audienceHint string // how to set an audience
	leeway       time.Duration
	url          string // where keys are discovered; "" for the default
	urlFlag      string // the flag that sets url
}

// check reports the first invalid setting.
func (s jwtSettings) check() error {
	if len(s.audiences) == 0 {
		return fmt.Errorf("%s: no audience; %s", s.verifier, s.audienceHint)
	}
	for _, a := range s.audiences {
		if strings.TrimSpace(a) == "" {
			return fmt.Errorf("%s: an audience is empty", s.verifier)
		}
	}
	if s.leeway < 0 || s.leeway > MaxLeeway {
		return fmt.Errorf("%s: leeway %s: must be between 0 and %s", s.verifier, s.leeway, MaxLeeway)
	}
	if s.url != "" {
		if err := checkFetchURL(s.url); err != nil {
			return fmt.Errorf("%s: %s: %w", s.verifier, s.urlFlag, err)
		}
	}
	return nil
}

// verifyJWT is the bearer-token check shared by the JWT verifiers: the token
// is taken from the Authorization header, verified with keys (parser pins
// the algorithm and checks exp, nbf, iat and audience), and its issuer must
// satisfy issuerOK for the loaded key set. It returns the raw token.
func verifyJWT(r *http.Request, keys *keySource, parser *jwt.Parser, claims jwt.Claims, issuerOK func(iss string, set *keySet) bool) (string, error) {
	raw, err := bearerToken(r)
	if err != nil {
		return "", err
	}
	set := keys.current.Load()
	if set == nil {
		return "", unavailable(CauseKeysUnavailable, "signing keys are not loaded yet; retry later", 5*time.Second,
			fmt.Errorf("%s: keys not loaded", keys.cfg.name))
	}
	kf, _ := keys.keyfunc(r.Context(), set)
	if _, err := parser.ParseWithClaims(raw, claims, kf); err != nil {
		return "", jwtError(keys, err)
	}
	iss, err := claims.GetIssuer()
	if err != nil || !issuerOK(iss, set) {
		return "", unauthorized(CauseWrongIssuer, "token issuer is not accepted", fmt.Errorf("issuer %q not accepted", iss))
	}
	return raw, nil
}

// bearerToken extracts the token of an "Authorization: Bearer" header.
func bearerToken(r *http.Request) (string, error) {
	h := r.Header.Values("Authorization")
	if len(h) == 0 {
		return "", unauthorized(CauseMissingCredentials, "missing Authorization header; send Authorization: Bearer <token>", nil)
	}
	if len(h) > 1 {
		return "", unauthorized(CauseInvalidToken, "more than one Authorization header", nil)
	}
	scheme, tok, ok := strings.Cut(h[0], " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", unauthorized(CauseInvalidToken, "Authorization header is not a Bearer token", nil)
	}
	tok = strings.TrimSpace(tok)
	if tok == "" {
		return "", unauthorized(CauseMissingCredentials, "empty bearer token", nil)
	}
	if len(tok) > MaxTokenBytes {
		return "", unauthorized(CauseInvalidToken, "bearer token too large", fmt.Errorf("token of %d bytes", len(tok)))
	}
	return tok, nil
}

// jwtError maps a parse or validation failure to its response.
func jwtError(keys *keySource, err error) *Error {
	switch {
	case errors.Is(err, errRefreshBudget):
		return unavailable(CauseKeysUnavailable, "token signed with a key not loaded yet; retry later", keys.refreshRetryAfter(), err)
	case errors.Is(err, errKeysUnreachable):
		return unavailable(CauseKeysUnavailable, "token signed with a key not loaded yet and the key endpoint is unreachable; retry later", 30*time.Second, err)
	case errors.Is(err, errUnknownKID):
		return unauthorized(CauseUnknownKey, "token signed with an unknown key", err)
	case errors.Is(err, errHeaderKey):
		return unauthorized(CauseForbiddenHeader, "token header names its own key (jku, x5u, jwk, x5c); not accepted", err)
	case errors.Is(err, jwt.ErrTokenExpired):
		return unauthorized(CauseTokenExpired, "token expired", err)
	case errors.Is(err, jwt.ErrTokenNotValidYet), errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return unauthorized(CauseTokenNotYetValid, "token not valid yet (nbf or iat in the future)", err)
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return unauthorized(CauseWrongAudience, "token audience is not accepted", err)
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return unauthorized(CauseWrongIssuer, "token issuer is not accepted", err)
	default:
		return unauthorized(CauseInvalidToken, "invalid token", err)
	}
}
