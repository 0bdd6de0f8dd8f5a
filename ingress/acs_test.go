package ingress_test

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/hookbridge/hookbridge/ingress"
	"github.com/hookbridge/hookbridge/internal/devissuer"
	"github.com/hookbridge/hookbridge/internal/testlog"
	"github.com/hookbridge/hookbridge/internal/testwait"
)

var jti atomic.Int64

// claims returns valid ACS-shaped claims for iss, each set unique (so no
// two signed tokens are the same).
func claims(iss *devissuer.Issuer) jwt.MapClaims {
	now := time.Now()
	return jwt.MapClaims{
		"jti": fmt.Sprint(jti.Add(1)),
		"iss": iss.Issuer(),
		"aud": testAudience,
		"iat": now.Unix(),
		"nbf": now.Unix(),
		"exp": now.Add(5 * time.Minute).Unix(),
	}
}

func sign(t testing.TB, iss *devissuer.Issuer, c jwt.MapClaims) string {
	t.Helper()
	tok, err := iss.Sign(c)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// signWith signs with any key and header tweaks.
func signWith(t testing.TB, method jwt.SigningMethod, key any, header map[string]any, c jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(method, c)
	for k, v := range header {
		tok.Header[k] = v
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestACSTokenMatrix(t *testing.T) {
	t.Parallel()
	iss := newIssuer(t)
	v := newACS(t, iss, ingress.ACSConfig{UnknownKIDRefreshEvery: time.Millisecond}, true)
	pub := &fakePublisher{}
	h, logs := newServer(t, ingress.Config{Publisher: pub, ACSVerifiers: []ingress.Verifier{v}})

	realKey, realKID := iss.Key()
	attacker, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pubDER, _ := x509.MarshalPKIXPublicKey(&realKey.PublicKey)
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	with := func(change func(jwt.MapClaims)) jwt.MapClaims {
		c := claims(iss)
		change(c)
		return c
	}
	now := time.Now()

	tests := []struct {
		name   string
		token  string
		header string // raw Authorization header, overrides token
		status int
	}{
		{name: "valid", token: sign(t, iss, claims(iss)), status: 200},
		{name: "expired within leeway", token: sign(t, iss, with(func(c jwt.MapClaims) { c["exp"] = now.Add(-10 * time.Second).Unix() })), status: 200},
		{name: "one of several audiences", token: sign(t, iss, with(func(c jwt.MapClaims) { c["aud"] = []string{"other", testAudience} })), status: 200},
		{name: "lower-case scheme", header: "bearer " + sign(t, iss, claims(iss)), status: 200},
		{name: "alg none", token: signWith(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, map[string]any{"kid": realKID}, claims(iss)), status: 401},
		{name: "HS256 with the public key as secret", token: signWith(t, jwt.SigningMethodHS256, pubPEM, map[string]any{"kid": realKID}, claims(iss)), status: 401},
		{name: "RS512 with the real key", token: signWith(t, jwt.SigningMethodRS512, realKey, map[string]any{"kid": realKID}, claims(iss)), status: 401},
		{name: "other key under the real kid", token: signWith(t, jwt.SigningMethodRS256, attacker, map[string]any{"kid": realKID}, claims(iss)), status: 401},
		{name: "wrong audience", token: sign(t, iss, with(func(c jwt.MapClaims) { c["aud"] = "some-other-resource" })), status: 401},
		{name: "no audience", token: sign(t, iss, with(func(c jwt.MapClaims) { delete(c, "aud") })), status: 401},
		{name: "wrong issuer", token: sign(t, iss, with(func(c jwt.MapClaims) { c["iss"] = "https://acscallautomation.communication.azure.com" })), status: 401},
		{name: "expired", token: sign(t, iss, with(func(c jwt.MapClaims) { c["exp"] = now.Add(-2 * time.Minute).Unix() })), status: 401},
		{name: "nbf in the future", token: sign(t, iss, with(func(c jwt.MapClaims) { c["nbf"] = now.Add(5 * time.Minute).Unix() })), status: 401},
		{name: "iat in the future", token: sign(t, iss, with(func(c jwt.MapClaims) { c["iat"] = now.Add(5 * time.Minute).Unix() })), status: 401},
		{name: "missing exp", token: sign(t, iss, with(func(c jwt.MapClaims) { delete(c, "exp") })), status: 401},
		{name: "jku elsewhere", token: signWith(t, jwt.SigningMethodRS256, attacker, map[string]any{"kid": "evil", "jku": "https://attacker.example/keys"}, claims(iss)), status: 401},
		{name: "x5u elsewhere", token: signWith(t, jwt.SigningMethodRS256, attacker, map[string]any{"kid": "evil", "x5u": "https://attacker.example/cert.pem"}, claims(iss)), status: 401},
		{name: "jku on a real token", token: signWith(t, jwt.SigningMethodRS256, realKey, map[string]any{"kid": realKID, "jku": iss.Issuer() + devissuer.KeysPath}, claims(iss)), status: 401},
		{name: "embedded jwk", token: signWith(t, jwt.SigningMethodRS256, attacker, map[string]any{"kid": "evil2", "jwk": map[string]any{"kty": "RSA"}}, claims(iss)), status: 401},
		{name: "garbage", token: "not-a-jwt", status: 401},
		{name: "three garbage segments", token: "a.b.c", status: 401},
		{name: "oversized", token: strings.Repeat("a", ingress.MaxTokenBytes+1), status: 401},
		{name: "no Authorization header", status: 401},
		{name: "basic auth", header: "Basic dXNlcjpwYXNz", status: 401},
		{name: "empty bearer", header: "Bearer ", status: 401},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptestRequest(tt.token, tt.header, callConnected)
			r := do(t, h, req)
			if r.status != tt.status {
				t.Fatalf("status %d, want %d (%s)", r.status, tt.status, r.raw)
			}
			if tt.status == 401 {
				if got := r.header.Get("WWW-Authenticate"); got != `Bearer error="invalid_token"` {
					t.Errorf("WWW-Authenticate = %q", got)
				}
				if r.body["error"] == nil || r.body["id"] == nil {
					t.Errorf("error body %s lacks error and id", r.raw)
				}
			}
		})
	}
	if n := pub.count(); n != 4 {
		t.Errorf("%d events published, want 4 (one per accepted request)", n)
	}
	// No token ever reaches the log.
	if log := logs.String(); strings.Contains(log, "eyJ") {
		t.Errorf("a token leaked into the log:\n%s", log)
	}
}

func httptestRequest(token, header, body string) *http.Request {
	req, _ := http.NewRequest(http.MethodPost, "/acs/callbacks", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	switch {
	case header != "":
		req.Header.Set("Authorization", header)
	case token != "":
		req.Header.Set("Authorization", "Bearer "+token)
	}
	return req
}

func TestUnknownKIDRefreshesThenAccepts(t *testing.T) {
	t.Parallel()
	iss := newIssuer(t)
	const every = 300 * time.Millisecond
	logs := &testlog.Buffer{}
	v := newACS(t, iss, ingress.ACSConfig{UnknownKIDRefreshEvery: every, Logger: slog.New(slog.NewTextHandler(logs, nil))}, true)
	defer func() {
		if t.Failed() {
			t.Log(logs.String())
		}
	}()
	pub := &fakePublisher{}
	h, _ := newServer(t, ingress.Config{Publisher: pub, ACSVerifiers: []ingress.Verifier{v}})

	// The issuer starts signing with a key its JWKS does not list yet.
	kid, err := iss.RotateHidden()
	if err != nil {
		t.Fatal(err)
	}
	tok := sign(t, iss, claims(iss))
	r := post(t, h, "/acs/callbacks", tok, "application/json", callConnected)
	if r.status != 401 {
		t.Fatalf("kid %s unknown after a fresh refresh: status %d, want 401 (%s)", kid, r.status, r.raw)
	}
	// The refresh budget is spent: the same token cannot be checked yet,
	// which is a 503 with Retry-After, not a rejection.
	r = post(t, h, "/acs/callbacks", tok, "application/json", callConnected)
	if r.status != 503 || r.header.Get("Retry-After") == "" {
		t.Fatalf("with the refresh budget spent: status %d Retry-After %q, want 503 with Retry-After", r.status, r.header.Get("Retry-After"))
	}
	// The JWKS catches up; after the budget refills the token is accepted.
	iss.Publish(kid)
	time.Sleep(every + 50*time.Millisecond)
	r = post(t, h, "/acs/callbacks", tok, "application/json", callConnected)
	if r.status != 200 {
		t.Fatalf("after the key was published: status %d (%s)", r.status, r.raw)
	}
	// Known now: no refresh needed, so no budget needed.
	if r := post(t, h, "/acs/callbacks", sign(t, iss, claims(iss)), "application/json", callConnected); r.status != 200 {
		t.Fatalf("second token with the new key: %d", r.status)
	}
}

func TestJWKSDownAfterStartKeepsKeys(t *testing.T) {
	t.Parallel()
	iss := newIssuer(t)
	v := newACS(t, iss, ingress.ACSConfig{RefreshInterval: 50 * time.Millisecond, UnknownKIDRefreshEvery: time.Millisecond}, true)
	h, _ := newServer(t, ingress.Config{Publisher: &fakePublisher{}, ACSVerifiers: []ingress.Verifier{v}})
	iss.SetJWKSStatus(http.StatusInternalServerError)
	time.Sleep(200 * time.Millisecond) // several failed background refreshes
	if r := post(t, h, "/acs/callbacks", sign(t, iss, claims(iss)), "application/json", callConnected); r.status != 200 {
		t.Fatalf("cached key refused while the JWKS is down: %d %s", r.status, r.raw)
	}
	// A rotated key cannot be fetched: 503 (retry), not 401 (never).
	iss.RotateHidden()
	if r := post(t, h, "/acs/callbacks", sign(t, iss, claims(iss)), "application/json", callConnected); r.status != 503 {
		t.Fatalf("unknown kid with the JWKS down: %d, want 503", r.status)
	}
}

func TestJWKSDownAtStartThenRecovers(t *testing.T) {
	t.Parallel()
	iss := newIssuer(t)
	iss.SetJWKSStatus(http.StatusServiceUnavailable)
	v := newACS(t, iss, ingress.ACSConfig{}, false)
	h, _ := newServer(t, ingress.Config{Publisher: &fakePublisher{}, ACSVerifiers: []ingress.Verifier{v}})
	tok := sign(t, iss, claims(iss))
	r := post(t, h, "/acs/callbacks", tok, "application/json", callConnected)
	if r.status != 503 || r.header.Get("Retry-After") == "" {
		t.Fatalf("keys never loaded: %d Retry-After %q, want 503 with Retry-After", r.status, r.header.Get("Retry-After"))
	}
	if v.Ready() {
		t.Fatal("ready without keys")
	}
	iss.SetJWKSStatus(0)
	testwait.Until(t, 10*time.Second, "the signing keys loaded once the JWKS answers", v.Ready)
	if r := post(t, h, "/acs/callbacks", tok, "application/json", callConnected); r.status != 200 {
		t.Fatalf("after recovery: %d %s", r.status, r.raw)
	}
}

func TestACSConfigValidate(t *testing.T) {
	t.Parallel()
	valid := ingress.ACSConfig{Audiences: []string{"a"}, OIDCURL: "https://example.com/x", Leeway: time.Second}
	if err := valid.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, change := range map[string]func(*ingress.ACSConfig){
		"no audience":         func(c *ingress.ACSConfig) { c.Audiences = nil },
		"blank audience":      func(c *ingress.ACSConfig) { c.Audiences = []string{" "} },
		"negative leeway":     func(c *ingress.ACSConfig) { c.Leeway = -time.Second },
		"leeway over 60s":     func(c *ingress.ACSConfig) { c.Leeway = 61 * time.Second },
		"plain http remote":   func(c *ingress.ACSConfig) { c.OIDCURL = "http://example.com/x" },
		"relative URL":        func(c *ingress.ACSConfig) { c.OIDCURL = "/x" },
		"other scheme":        func(c *ingress.ACSConfig) { c.OIDCURL = "ftp://example.com/x" },
		"http to a public IP": func(c *ingress.ACSConfig) { c.OIDCURL = "http://8.8.8.8/x" },
	} {
		c := valid
		change(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	for _, ok := range []string{"http://127.0.0.1:8080/x", "http://[::1]/x", "http://localhost/x"} {
		c := valid
		c.OIDCURL = ok
		if err := c.Validate(); err != nil {
			t.Errorf("%s refused: %v", ok, err)
		}
	}
}
