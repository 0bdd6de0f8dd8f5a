// Package devissuertest serves a development issuer for one test, the way
// net/http/httptest serves a handler: on loopback and a free port, closed
// when the test ends.
//
//	iss := devissuertest.NewServer(t, "acs-resource")
//	v, _ := ingress.NewACSVerifier(ingress.ACSConfig{Audiences: []string{"acs-resource"}, OIDCURL: iss.DiscoveryURL()})
//	tok, _ := iss.ACSToken("")
package devissuertest

import (
	"net/http/httptest"
	"testing"

	"github.com/hookbridge/hookbridge/internal/devissuer"
)

// NewServer serves a new issuer whose tokens are for audience by default,
// until the test ends.
func NewServer(t testing.TB, audience string) *devissuer.Issuer {
	t.Helper()
	srv := httptest.NewUnstartedServer(nil)
	iss, err := devissuer.New("http://"+srv.Listener.Addr().String(), audience)
	if err != nil {
		srv.Close()
		t.Fatalf("devissuertest: %v", err)
	}
	srv.Config.Handler = iss.Handler()
	srv.Start()
	t.Cleanup(srv.Close)
	return iss
}
