// Package devissuer is a development OpenID Connect issuer: it serves a
// discovery document and a JWKS for freshly generated RSA keys, and mints
// tokens shaped like the ones Call Automation sends. `hookbridge dev` runs one
// on loopback so that its ACS verifier can trust it instead of Microsoft, and
// tests use it as the local issuer of every JWT they send.
//
// It is not an identity provider: it signs whatever it is asked to.
package devissuer

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"
)

// Paths served by Handler.
const (
	// ACSDiscoveryPath mirrors Call Automation's discovery path.
	ACSDiscoveryPath = "/calling/.well-known/acsopenidconfiguration"
	// DiscoveryPath is the generic OpenID Connect discovery path.
	DiscoveryPath = "/.well-known/openid-configuration"
	// KeysPath serves the JWKS.
	KeysPath = "/calling/keys"
	// TokenPath mints an ACS-shaped token for the default audience (GET),
	// for sending test events by hand.
	TokenPath = "/token"
	// EntraTokenPath mints an Event Grid-shaped Entra token (GET, query
	// tenant, aud and appid; v1=true for a v1 token).
	EntraTokenPath = "/token/entra"
)

// Issuer signs tokens with RSA keys it generated and publishes them.
type Issuer struct {
	base     string // e.g. http://127.0.0.1:41234; the issuer URL
	audience string

	mu      sync.RWMutex
	keys    []*signingKey // keys[0] signs; all are published
	hidden  map[string]bool
	jwksErr int // if non-zero, the JWKS answers this status (tests)
}

type signingKey struct {
	kid  string
	priv *rsa.PrivateKey
}

// New returns an issuer whose issuer URL is base (the URL it is served at)
// and whose default token audience is audience. It generates one RSA-2048
// key.
func New(base, audience string) (*Issuer, error) {
	iss := &Issuer{base: strings.TrimSuffix(base, "/"), audience: audience, hidden: map[string]bool{}}
	if _, err := iss.Rotate(); err != nil {
		return nil, err
	}
	return iss, nil
}

// Issuer returns the issuer URL, the iss of every token.
func (i *Issuer) Issuer() string { return i.base }

// DiscoveryURL returns the ACS-style discovery URL.
func (i *Issuer) DiscoveryURL() string { return i.base + ACSDiscoveryPath }

// Rotate generates a new signing key, publishes it, and signs with it from
// now on. The old keys stay published. It returns the new kid.
func (i *Issuer) Rotate() (string, error) {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return "", fmt.Errorf("generate RSA key: %w", err)
	}
	var b [8]byte
	rand.Read(b[:])
	sk := &signingKey{kid: hex.EncodeToString(b[:]), priv: k}
	i.mu.Lock()
	i.keys = append([]*signingKey{sk}, i.keys...)
	i.mu.Unlock()
	return sk.kid, nil
}

// RotateHidden generates a new signing key and signs with it, but does not
// publish it until Publish is called: a key rotation the JWKS has not caught
// up with yet.
func (i *Issuer) RotateHidden() (string, error) {
	kid, err := i.Rotate()
	if err != nil {
		return "", err
	}
	i.mu.Lock()
	i.hidden[kid] = true
	i.mu.Unlock()
	return kid, nil
}

// Publish adds a key created by RotateHidden to the JWKS.
func (i *Issuer) Publish(kid string) {
	i.mu.Lock()
	delete(i.hidden, kid)
	i.mu.Unlock()
}

// SetJWKSStatus makes the JWKS endpoint answer status (0 restores it), to
// simulate an outage.
func (i *Issuer) SetJWKSStatus(status int) {
	i.mu.Lock()
	i.jwksErr = status
	i.mu.Unlock()
}

// Key returns the current signing key and its kid.
func (i *Issuer) Key() (*rsa.PrivateKey, string) {
	i.mu.RLock()
	defer i.mu.RUnlock()
	return i.keys[0].priv, i.keys[0].kid
}

// Sign signs claims with the current key (RS256, kid set).
func (i *Issuer) Sign(claims jwt.Claims) (string, error) {
	priv, kid := i.Key()
	t := jwt.NewWithClaims(jwt.SigningMethodRS256, claims)
	t.Header["kid"] = kid
	return t.SignedString(priv)
}

// ACSToken mints a token shaped like Call Automation's: issuer, the given
// audience (the default one if empty), issued now, valid for five minutes,
// and unique (Call Automation makes a new token for every event).
func (i *Issuer) ACSToken(audience string) (string, error) {
	if audience == "" {
		audience = i.audience
	}
	now := time.Now()
	var id [12]byte
	rand.Read(id[:])
	return i.Sign(jwt.RegisteredClaims{
		ID:        hex.EncodeToString(id[:]),
		Issuer:    i.base,
		Audience:  jwt.ClaimStrings{audience},
		IssuedAt:  jwt.NewNumericDate(now),
		NotBefore: jwt.NewNumericDate(now),
		ExpiresAt: jwt.NewNumericDate(now.Add(5 * time.Minute)),
	})
}

// EntraIssuer is the v2 issuer of tenant at this issuer: its Entra
// authority is the issuer's base URL.
func (i *Issuer) EntraIssuer(tenant string) string { return i.base + "/" + tenant + "/v2.0" }

// EntraToken mints a token shaped like the one Event Grid sends to a
// secured webhook: for tenant and audience, issued to appID (appid in a v1
// token, azp in a v2 token), valid for one hour. A v1 token's issuer is
// https://sts.windows.net/<tenant>/, as Entra writes it.
func (i *Issuer) EntraToken(tenant, audience, appID string, v1 bool) (string, error) {
	now := time.Now()
	c := jwt.MapClaims{
		"aud": audience,
		"tid": tenant,
		"iat": now.Unix(),
		"nbf": now.Unix(),
		"exp": now.Add(time.Hour).Unix(),
		"sub": "eventgrid-service-principal",
		"oid": "eventgrid-service-principal",
	}
	if v1 {
		c["iss"], c["appid"], c["ver"] = "https://sts.windows.net/"+tenant+"/", appID, "1.0"
	} else {
		c["iss"], c["azp"], c["ver"] = i.EntraIssuer(tenant), appID, "2.0"
	}
	return i.Sign(c)
}

// Handler serves the discovery documents, the JWKS and the token endpoint.
func (i *Issuer) Handler() http.Handler {
	mux := http.NewServeMux()
	discovery := func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, map[string]any{
			"issuer":                                i.base,
			"jwks_uri":                              i.base + KeysPath,
			"id_token_signing_alg_values_supported": []string{"RS256"},
		})
	}
	mux.HandleFunc("GET "+ACSDiscoveryPath, discovery)
	mux.HandleFunc("GET "+DiscoveryPath, discovery)
	// Entra-style tenant discovery: <base>/<tenant>/v2.0/...
	mux.HandleFunc("GET /{tenant}/v2.0/.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, map[string]any{
			"issuer":                                i.EntraIssuer(r.PathValue("tenant")),
			"jwks_uri":                              i.base + KeysPath,
			"id_token_signing_alg_values_supported": []string{"RS256"},
		})
	})
	mux.HandleFunc("GET "+KeysPath, func(w http.ResponseWriter, r *http.Request) {
		b, status, err := i.jwks(r.Context())
		if status != 0 {
			w.WriteHeader(status)
			return
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(b)
	})
	mux.HandleFunc("GET "+TokenPath, func(w http.ResponseWriter, r *http.Request) {
		tok, err := i.ACSToken(r.URL.Query().Get("aud"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintln(w, tok)
	})
	mux.HandleFunc("GET "+EntraTokenPath, func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if q.Get("tenant") == "" || q.Get("aud") == "" || q.Get("appid") == "" {
			http.Error(w, "query parameters tenant, aud and appid are required", http.StatusBadRequest)
			return
		}
		tok, err := i.EntraToken(q.Get("tenant"), q.Get("aud"), q.Get("appid"), q.Get("v1") == "true")
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintln(w, tok)
	})
	return mux
}

// jwks renders the published public keys.
func (i *Issuer) jwks(ctx context.Context) ([]byte, int, error) {
	i.mu.RLock()
	defer i.mu.RUnlock()
	if i.jwksErr != 0 {
		return nil, i.jwksErr, nil
	}
	store := jwkset.NewMemoryStorage()
	for _, k := range i.keys {
		if i.hidden[k.kid] {
			continue
		}
		jwk, err := jwkset.NewJWKFromKey(&k.priv.PublicKey, jwkset.JWKOptions{
			Metadata: jwkset.JWKMetadataOptions{KID: k.kid, ALG: jwkset.AlgRS256, USE: jwkset.UseSig},
		})
		if err != nil {
			return nil, 0, fmt.Errorf("encode key %s: %w", k.kid, err)
		}
		if err := store.KeyWrite(ctx, jwk); err != nil {
			return nil, 0, err
		}
	}
	b, err := store.JSONPublic(ctx)
	return b, 0, err
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}
