package ingress_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/hookbridge/hookbridge/ingress"
	"github.com/hookbridge/hookbridge/relay"
)

const (
	keyCurrent  = "k1-0123456789abcdef-current"
	keyPrevious = "k0-fedcba9876543210-previous"
)

func TestAPIKeys(t *testing.T) {
	t.Parallel()
	v, err := ingress.NewAPIKeyVerifier([]string{keyCurrent, keyPrevious})
	if err != nil {
		t.Fatal(err)
	}
	pub := &fakePublisher{}
	h, logs := newServer(t, ingress.Config{Publisher: pub, ACSVerifiers: []ingress.Verifier{v}})
	send := func(query, header string) response {
		req := httptest.NewRequest(http.MethodPost, "/acs/callbacks"+query, strings.NewReader(callConnected))
		req.Header.Set("Content-Type", "application/json")
		if header != "" {
			req.Header.Set("X-Api-Key", header)
		}
		return do(t, h, req)
	}
	tests := []struct {
		name, query, header string
		status              int
	}{
		{"current key in the query", "?key=" + url.QueryEscape(keyCurrent), "", 200},
		{"previous key, during rotation", "?key=" + url.QueryEscape(keyPrevious), "", 200},
		{"key in the header", "", keyCurrent, 200},
		{"key among other parameters", "?a=1&key=" + url.QueryEscape(keyCurrent) + "&b=2", "", 200},
		{"wrong key", "?key=k1-0123456789abcdef-curren", "", 401},
		{"key with a suffix", "?key=" + url.QueryEscape(keyCurrent+"x"), "", 401},
		{"empty key", "?key=", "", 401},
		{"no key", "", "", 401},
	}
	for _, tt := range tests {
		if r := send(tt.query, tt.header); r.status != tt.status {
			t.Errorf("%s: status %d, want %d (%s)", tt.name, r.status, tt.status, r.raw)
		}
	}
	if n := pub.count(); n != 4 {
		t.Errorf("%d events published, want 4", n)
	}
	for _, k := range []string{keyCurrent, keyPrevious, "0123456789abcdef"} {
		if strings.Contains(logs.String(), k) {
			t.Errorf("an API key appears in the log:\n%s", logs.String())
		}
	}
	// The key is removed from the URL once checked.
	req := httptest.NewRequest(http.MethodPost, "/acs/callbacks?key="+url.QueryEscape(keyCurrent)+"&x=1", nil)
	if _, err := v.Verify(req); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(req.URL.RawQuery, "key") || req.URL.Query().Get("x") != "1" {
		t.Errorf("query after verification: %q", req.URL.RawQuery)
	}
	if _, err := ingress.NewAPIKeyVerifier([]string{"short"}); err == nil {
		t.Error("a 5-character key was accepted")
	}
}

func TestAPIKeyTogetherWithJWT(t *testing.T) {
	t.Parallel()
	iss := newIssuer(t)
	acs := newACS(t, iss, ingress.ACSConfig{}, true)
	keys, _ := ingress.NewAPIKeyVerifier([]string{keyCurrent})
	h, _ := newServer(t, ingress.Config{Publisher: &fakePublisher{}, ACSVerifiers: []ingress.Verifier{acs, keys}})
	send := func(withKey, withToken bool) int {
		path := "/acs/callbacks"
		if withKey {
			path += "?key=" + url.QueryEscape(keyCurrent)
		}
		tok := ""
		if withToken {
			tok = sign(t, iss, claims(iss))
		}
		return post(t, h, path, tok, "application/json", callConnected).status
	}
	if s := send(true, true); s != 200 {
		t.Errorf("key and token: %d", s)
	}
	if s := send(true, false); s != 401 {
		t.Errorf("key without token: %d", s)
	}
	if s := send(false, true); s != 401 {
		t.Errorf("token without key: %d", s)
	}
}

func TestSignedCallbackURLs(t *testing.T) {
	t.Parallel()
	keys, err := ingress.ParseCallbackKeys("k2:" + strings.Repeat("n", 32) + ",k1:" + strings.Repeat("o", 32))
	if err != nil {
		t.Fatal(err)
	}
	newKey, oldKey := keys[0], keys[1]
	v, _ := ingress.NewSignedURLVerifier(keys)
	onlyNew, _ := ingress.NewSignedURLVerifier(keys[:1])
	sign := func(key ingress.CallbackKey, ttl time.Duration, base string) string {
		u, err := ingress.SignCallbackURL(base, key, time.Now().Add(ttl))
		if err != nil {
			t.Fatal(err)
		}
		return u
	}
	check := func(v *ingress.SignedURLVerifier, raw string) error {
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		req := httptest.NewRequest(http.MethodPost, u.RequestURI(), nil)
		_, verr := v.Verify(req)
		if verr == nil && (req.URL.Query().Has(ingress.ParamSignature) || req.URL.Query().Has(ingress.ParamKeyID)) {
			t.Errorf("signature parameters left in %q", req.URL.RawQuery)
		}
		return verr
	}
	const base = "https://hooks.example.com/acs/callbacks?tenant=contoso"
	valid := sign(newKey, time.Hour, base)
	tampered := strings.Replace(valid, "tenant=contoso", "tenant=fabrikam", 1)
	extended := strings.Replace(valid, "hbexp=", "hbexp=9", 1)
	badSig := valid[:len(valid)-3] + "AAA"
	tests := []struct {
		name string
		v    *ingress.SignedURLVerifier
		url  string
		ok   bool
	}{
		{"valid", v, valid, true},
		{"behind a proxy that rewrites host and path", v, strings.Replace(valid, "https://hooks.example.com/acs/callbacks", "http://10.0.0.5:8080/acs/callbacks", 1), true},
		{"old key after rotation", v, sign(oldKey, time.Hour, base), true},
		{"old key once retired", onlyNew, sign(oldKey, time.Hour, base), false},
		{"expired", v, sign(newKey, -time.Second, base), false},
		{"tampered parameter", v, tampered, false},
		{"extended expiry", v, extended, false},
		{"bad signature", v, badSig, false},
		{"unsigned", v, base, false},
		{"duplicated signature", v, valid + "&hbsig=x", false},
	}
	for _, tt := range tests {
		if err := check(tt.v, tt.url); (err == nil) != tt.ok {
			t.Errorf("%s: err = %v, want ok=%v", tt.name, err, tt.ok)
		}
	}
	pub := &fakePublisher{}
	h, _ := newServer(t, ingress.Config{Publisher: pub, ACSVerifiers: []ingress.Verifier{v}})
	u, _ := url.Parse(valid)
	req := httptest.NewRequest(http.MethodPost, u.RequestURI(), strings.NewReader(callConnected))
	req.Header.Set("Content-Type", "application/json")
	if r := do(t, h, req); r.status != 200 || pub.events[0].Verifier != ingress.VerifierSignedURL {
		t.Errorf("signed URL through the server: %d %+v", r.status, pub.events)
	}
	for _, bad := range []string{"", "k", "k:short", ":" + strings.Repeat("s", 32), "a b:" + strings.Repeat("s", 32), "k:" + strings.Repeat("s", 32) + ",k:" + strings.Repeat("t", 32)} {
		if _, err := ingress.ParseCallbackKeys(bad); err == nil {
			t.Errorf("ParseCallbackKeys(%q) accepted", bad)
		}
	}
}

// TestAPIKeyWithSignedURL: with both an API key and callback signing keys
// configured, a callback URL carries both, whichever way it was made (the
// key in the base that was signed, or appended after signing) and in
// whichever order the verifiers run; neither secret reaches the event.
func TestAPIKeyWithSignedURL(t *testing.T) {
	t.Parallel()
	keys, err := ingress.ParseCallbackKeys("k1:" + strings.Repeat("s", 32))
	if err != nil {
		t.Fatal(err)
	}
	su, _ := ingress.NewSignedURLVerifier(keys)
	ak, _ := ingress.NewAPIKeyVerifier([]string{keyCurrent})
	const base = "https://hooks.example.com/acs/callbacks?tenant=contoso"
	keyInSigned, err := ingress.SignCallbackURL(base+"&key="+url.QueryEscape(keyCurrent), keys[0], time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	signed, err := ingress.SignCallbackURL(base, keys[0], time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	keyAppended := signed + "&key=" + url.QueryEscape(keyCurrent)
	for _, order := range [][]ingress.Verifier{{ak, su}, {su, ak}} {
		for _, tc := range []struct {
			name, url string
			want      int
		}{
			{"key in the signed base", keyInSigned, 200},
			{"key appended after signing", keyAppended, 200},
			{"wrong key in the signed base", strings.Replace(keyInSigned, url.QueryEscape(keyCurrent), "wrong", 1), 401},
			{"signed, without the key", signed, 401},
		} {
			pub := &fakePublisher{}
			h, _ := newServer(t, ingress.Config{Publisher: pub, ACSVerifiers: order})
			u, _ := url.Parse(tc.url)
			req := httptest.NewRequest(http.MethodPost, u.RequestURI(), strings.NewReader(callConnected))
			req.Header.Set("Content-Type", "application/json")
			if r := do(t, h, req); r.status != tc.want {
				t.Errorf("%s, verifiers %s then %s: %d %s, want %d", tc.name, order[0].Name(), order[1].Name(), r.status, r.raw, tc.want)
				continue
			}
			if q := req.URL.Query(); tc.want == 200 && (q.Has("key") || q.Has(ingress.ParamSignature) || q.Get("tenant") != "contoso") {
				t.Errorf("%s, verifiers %s then %s: the query after verification is %q, want the secrets removed and the rest kept", tc.name, order[0].Name(), order[1].Name(), req.URL.RawQuery)
			}
		}
	}
}

func TestReplayDefence(t *testing.T) {
	t.Parallel()
	iss := newIssuer(t)
	acs := newACS(t, iss, ingress.ACSConfig{}, true)
	pub := &fakePublisher{}
	h, _ := newServer(t, ingress.Config{Publisher: pub, ACSVerifiers: []ingress.Verifier{acs}})
	send := func(tok, body string) int {
		return post(t, h, "/acs/callbacks", tok, "application/json", body).status
	}
	tok := sign(t, iss, claims(iss))
	if s := send(tok, callConnected); s != 200 {
		t.Fatalf("first use: %d", s)
	}
	if s := send(tok, callConnected); s != 200 {
		t.Fatalf("same token, same body (a retry): %d", s)
	}
	if n := pub.count(); n != 1 {
		t.Errorf("a retried request queued again: %d events", n)
	}
	forged := strings.Replace(callConnected, "CallConnected", "CallDisconnected", 1)
	if s := send(tok, forged); s != 401 {
		t.Errorf("same token, another body: %d, want 401", s)
	}
	// A token whose request failed stays usable.
	tok2 := sign(t, iss, claims(iss))
	pub.mu.Lock()
	pub.err = fmt.Errorf("%w: disk full", relay.ErrUnavailable)
	pub.mu.Unlock()
	if s := send(tok2, forged); s != 503 {
		t.Fatalf("queue down: %d", s)
	}
	pub.mu.Lock()
	pub.err = nil
	pub.mu.Unlock()
	if s := send(tok2, forged); s != 200 {
		t.Errorf("retry after 503: %d, want 200", s)
	}
	if n := pub.count(); n != 2 {
		t.Errorf("%d events queued, want 2", n)
	}
	// With the defence off, a token is not bound to its body.
	h2, _ := newServer(t, ingress.Config{Publisher: &fakePublisher{}, ACSVerifiers: []ingress.Verifier{acs}, ReplayCacheSize: -1})
	tok3 := sign(t, iss, claims(iss))
	for _, body := range []string{callConnected, forged} {
		if r := post(t, h2, "/acs/callbacks", tok3, "application/json", body); r.status != 200 {
			t.Errorf("defence off: %d", r.status)
		}
	}
}

func TestRateLimitPerClient(t *testing.T) {
	t.Parallel()
	h, _ := newServer(t, ingress.Config{Publisher: &fakePublisher{}, ACSVerifiers: []ingress.Verifier{staticVerifier{true}},
		RateLimit: 1, RateBurst: 2, TrustedProxies: mustPrefixes(t, "10.0.0.0/8")})
	send := func(peer, xff string) response {
		req := testRequest(http.MethodPost, "/acs/callbacks", "application/json", callConnected)
		req.RemoteAddr = peer + ":40000"
		if xff != "" {
			req.Header.Set("X-Forwarded-For", xff)
		}
		return do(t, h, req)
	}
	for i := range 2 {
		if r := send("192.0.2.1", ""); r.status != 200 {
			t.Fatalf("request %d within the burst: %d", i, r.status)
		}
	}
	r := send("192.0.2.1", "")
	if r.status != 429 || r.header.Get("Retry-After") == "" {
		t.Fatalf("over the rate: %d Retry-After %q", r.status, r.header.Get("Retry-After"))
	}
	if r := send("192.0.2.2", ""); r.status != 200 {
		t.Errorf("another client was limited: %d", r.status)
	}
	// Behind a trusted proxy, clients are told apart by X-Forwarded-For.
	for i := range 2 {
		if r := send("10.1.1.1", "198.51.100.7"); r.status != 200 {
			t.Fatalf("proxied request %d: %d", i, r.status)
		}
	}
	if r := send("10.1.1.1", "198.51.100.7"); r.status != 429 {
		t.Errorf("proxied client over the rate: %d", r.status)
	}
	if r := send("10.1.1.1", "198.51.100.8"); r.status != 200 {
		t.Errorf("another client behind the same proxy: %d", r.status)
	}
	// An untrusted peer cannot pick its identity with X-Forwarded-For.
	for i := range 3 {
		r := send("192.0.2.9", fmt.Sprintf("203.0.113.%d", i))
		if i == 2 && r.status != 429 {
			t.Errorf("spoofed X-Forwarded-For escaped the limit: %d", r.status)
		}
	}
}
