package ingress_test

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hookbridge/hookbridge/ingress"
)

var (
	fuzzOnce sync.Once
	fuzzACS  *ingress.ACSVerifier
	fuzzTok  string
)

// FuzzAuthorizationHeader feeds arbitrary Authorization headers to the ACS
// verifier: it must answer 401 (or 503 while keys cannot be checked) and
// never panic; only the one valid token passes.
func FuzzAuthorizationHeader(f *testing.F) {
	fuzzOnce.Do(func() {
		iss := newIssuer(f)
		fuzzACS = newACS(f, iss, ingress.ACSConfig{UnknownKIDRefreshEvery: time.Hour}, true)
		fuzzTok = sign(f, iss, claims(iss))
	})
	for _, s := range []string{"Bearer " + fuzzTok, "Bearer", "Bearer  ", "bearer x.y.z", "Basic abc", "Bearer " + strings.Repeat("A", 9000),
		"Bearer eyJhbGciOiJub25lIn0.eyJleHAiOjF9.", "Bearer " + fuzzTok + "x", "Bearer " + strings.Replace(fuzzTok, ".", "..", 1)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, header string) {
		req := httptest.NewRequest(http.MethodPost, "/acs/callbacks", nil)
		req.Header.Set("Authorization", header)
		_, err := fuzzACS.Verify(req)
		if err == nil {
			if strings.TrimSpace(strings.TrimPrefix(strings.TrimPrefix(header, "Bearer "), "bearer ")) != fuzzTok {
				t.Fatalf("accepted %q", header)
			}
			return
		}
		var e *ingress.Error
		if !errors.As(err, &e) || (e.Status != 401 && e.Status != 503) {
			t.Fatalf("header %q: %v, want a 401 or 503 *Error", header, err)
		}
	})
}

// FuzzCallbackURLSignature feeds arbitrary query strings to the signed-URL
// verifier: nothing but a URL signed with its key may pass.
func FuzzCallbackURLSignature(f *testing.F) {
	key := ingress.CallbackKey{ID: "k1", Secret: []byte(strings.Repeat("s", 32))}
	v, _ := ingress.NewSignedURLVerifier([]ingress.CallbackKey{key})
	signed, _ := ingress.SignCallbackURL("https://h/acs/callbacks?a=1", key, time.Now().Add(time.Hour))
	f.Add(signed[strings.Index(signed, "?")+1:])
	f.Add("hbexp=1&hbkid=k1&hbsig=abc")
	f.Add("hbexp=99999999999&hbkid=k1&hbsig=&hbsig=x")
	f.Add("%zz")
	f.Fuzz(func(t *testing.T, query string) {
		req := httptest.NewRequest(http.MethodPost, "/acs/callbacks", nil)
		req.URL.RawQuery = query
		_, err := v.Verify(req)
		if err == nil {
			// Re-signing what was accepted must give the same URL query.
			resigned, serr := ingress.SignCallbackURL("https://h/acs/callbacks?"+req.URL.RawQuery, key, expiryOf(t, query))
			if serr != nil || !strings.Contains(resigned, req.URL.RawQuery) {
				t.Fatalf("accepted an unsigned query %q", query)
			}
			return
		}
		var e *ingress.Error
		if !errors.As(err, &e) || e.Status != 401 {
			t.Fatalf("query %q: %v, want a 401 *Error", query, err)
		}
	})
}

func expiryOf(t *testing.T, query string) time.Time {
	req := httptest.NewRequest(http.MethodGet, "/?"+query, nil)
	var secs int64
	for _, c := range req.URL.Query().Get(ingress.ParamExpires) {
		secs = secs*10 + int64(c-'0')
	}
	return time.Unix(secs, 0)
}
