package ingress_test

import (
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/hookbridge/hookbridge/ingress"
	"github.com/hookbridge/hookbridge/internal/devissuer"
)

const (
	testTenant = "72f988bf-86f1-41af-91ab-2d7cd011db47"
	testApp    = "api://hookbridge-webhook"
)

// newEntra returns a running Entra verifier trusting iss as its authority.
func newEntra(t testing.TB, iss *devissuer.Issuer, cfg ingress.EntraConfig, wait bool) *ingress.EntraVerifier {
	t.Helper()
	if cfg.Tenant == "" {
		cfg.Tenant = testTenant
	}
	if cfg.Audiences == nil {
		cfg.Audiences = []string{testApp}
	}
	cfg.Authority = iss.Issuer()
	v, err := ingress.NewEntraVerifier(cfg)
	if err != nil {
		t.Fatal(err)
	}
	runVerifier(t, v.Run, v.Ready, wait)
	return v
}

// entraToken signs a v1 Event Grid token, after change (if any) edits its
// claims.
func entraToken(t testing.TB, iss *devissuer.Issuer, change func(map[string]any)) string {
	t.Helper()
	now := time.Now()
	c := jwt.MapClaims{
		"iss": "https://sts.windows.net/" + testTenant + "/", "aud": testApp, "tid": testTenant,
		"appid": ingress.EventGridAppID, "ver": "1.0",
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(time.Hour).Unix(),
	}
	if change != nil {
		change(c)
	}
	return sign(t, iss, c)
}

func v2(iss *devissuer.Issuer) func(map[string]any) {
	return func(c map[string]any) {
		delete(c, "appid")
		c["iss"], c["azp"], c["ver"] = iss.EntraIssuer(testTenant), ingress.EventGridAppID, "2.0"
	}
}

func TestEntraTokenMatrix(t *testing.T) {
	t.Parallel()
	iss := newIssuer(t)
	v := newEntra(t, iss, ingress.EntraConfig{CacheSize: -1, UnknownKIDRefreshEvery: time.Millisecond}, true)
	pub := &fakePublisher{}
	h, _ := newServer(t, ingress.Config{Publisher: pub, EventGridVerifiers: []ingress.Verifier{v}})
	body := readTestdata(t, "eventgrid/IncomingCall.json")
	now := time.Now()
	tests := []struct {
		name   string
		change func(map[string]any)
		status int
	}{
		{"v1 token", nil, 200},
		{"v2 token", v2(iss), 200},
		{"v1 token with the app's GUID audience", func(c map[string]any) { c["aud"] = "11111111-2222-3333-4444-555555555555" }, 401},
		{"wrong tenant in tid", func(c map[string]any) { c["tid"] = "00000000-0000-0000-0000-000000000000" }, 401},
		{"no tid", func(c map[string]any) { delete(c, "tid") }, 401},
		{"wrong tenant's v1 issuer", func(c map[string]any) { c["iss"] = "https://sts.windows.net/00000000-0000-0000-0000-000000000000/" }, 401},
		{"wrong tenant's v2 issuer", func(c map[string]any) {
			v2(iss)(c)
			c["iss"] = iss.EntraIssuer("00000000-0000-0000-0000-000000000000")
		}, 401},
		{"other issuer", func(c map[string]any) { c["iss"] = "https://login.example.com/" + testTenant + "/v2.0" }, 401},
		{"wrong audience", func(c map[string]any) { c["aud"] = "api://someone-else" }, 401},
		{"v1 token from another app", func(c map[string]any) { c["appid"] = "11111111-1111-1111-1111-111111111111" }, 401},
		{"v1 token with only azp", func(c map[string]any) { delete(c, "appid"); c["azp"] = ingress.EventGridAppID }, 401},
		{"v2 token from another app", func(c map[string]any) { v2(iss)(c); c["azp"] = "11111111-1111-1111-1111-111111111111" }, 401},
		{"v2 token with only appid", func(c map[string]any) { v2(iss)(c); delete(c, "azp"); c["appid"] = ingress.EventGridAppID }, 401},
		{"expired", func(c map[string]any) { c["exp"] = now.Add(-2 * time.Minute).Unix() }, 401},
		{"not yet valid", func(c map[string]any) { c["nbf"] = now.Add(10 * time.Minute).Unix() }, 401},
		{"no exp", func(c map[string]any) { delete(c, "exp") }, 401},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := post(t, h, "/eventgrid", entraToken(t, iss, tt.change), "application/json", body)
			if r.status != tt.status {
				t.Fatalf("status %d, want %d: %s", r.status, tt.status, r.raw)
			}
			if r.status == 401 && r.header.Get("WWW-Authenticate") == "" {
				t.Error("401 without WWW-Authenticate")
			}
		})
	}
	// An HS256 token keyed with a guessable secret is refused like any other
	// algorithm than RS256.
	hs := signWith(t, jwt.SigningMethodHS256, []byte("secret"), nil, jwt.MapClaims{"iss": "https://sts.windows.net/" + testTenant + "/",
		"aud": testApp, "tid": testTenant, "appid": ingress.EventGridAppID, "exp": now.Add(time.Hour).Unix()})
	if r := post(t, h, "/eventgrid", hs, "application/json", body); r.status != 401 {
		t.Errorf("HS256: %d", r.status)
	}
}

func TestEntraCacheHonoursExpiryAndFailures(t *testing.T) {
	t.Parallel()
	iss := newIssuer(t)
	v := newEntra(t, iss, ingress.EntraConfig{Leeway: time.Nanosecond, CacheSize: 100}, true) // no leeway to speak of
	h, _ := newServer(t, ingress.Config{Publisher: &fakePublisher{}, EventGridVerifiers: []ingress.Verifier{v}})
	body := readTestdata(t, "eventgrid/IncomingCall.json")
	send := func(tok string) int {
		return post(t, h, "/eventgrid", tok, "application/json", body).status
	}
	// A failed token stays failed: failures are never cached as successes.
	bad := entraToken(t, iss, func(c map[string]any) { c["appid"] = "not-event-grid" })
	for i := range 3 {
		if s := send(bad); s != 401 {
			t.Fatalf("bad token, attempt %d: %d", i, s)
		}
	}
	// A cached token is not accepted past its exp, whatever the leeway.
	exp := time.Now().Add(2 * time.Second).Truncate(time.Second).Add(time.Second)
	short := entraToken(t, iss, func(c map[string]any) { c["exp"] = exp.Unix() })
	if s := send(short); s != 200 {
		t.Fatalf("fresh short-lived token: %d", s)
	}
	if s := send(short); s != 200 {
		t.Fatalf("cached short-lived token: %d", s)
	}
	time.Sleep(time.Until(exp) + 50*time.Millisecond)
	if s := send(short); s != 401 {
		t.Fatalf("token past its exp: %d, want 401", s)
	}
}

func TestEntraConfigValidate(t *testing.T) {
	t.Parallel()
	valid := ingress.EntraConfig{Tenant: testTenant, Audiences: []string{testApp}, Authority: "https://login.microsoftonline.com"}
	if err := valid.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, change := range map[string]func(*ingress.EntraConfig){
		"no tenant":           func(c *ingress.EntraConfig) { c.Tenant = "" },
		"tenant with a slash": func(c *ingress.EntraConfig) { c.Tenant = "a/b" },
		"no audience":         func(c *ingress.EntraConfig) { c.Audiences = nil },
		"blank audience":      func(c *ingress.EntraConfig) { c.Audiences = []string{""} },
		"leeway too long":     func(c *ingress.EntraConfig) { c.Leeway = 2 * time.Minute },
		"plain http":          func(c *ingress.EntraConfig) { c.Authority = "http://login.example.com" },
	} {
		c := valid
		change(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
