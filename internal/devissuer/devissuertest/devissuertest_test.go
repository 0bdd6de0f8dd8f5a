package devissuertest_test

import (
	"encoding/json"
	"net/http"
	"testing"

	"github.com/hookbridge/hookbridge/internal/devissuer/devissuertest"
)

// TestNewServer: the issuer is served where its discovery URL says, and
// names itself there.
func TestNewServer(t *testing.T) {
	t.Parallel()
	iss := devissuertest.NewServer(t, "acs-resource")
	resp, err := http.Get(iss.DiscoveryURL())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var doc struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil || resp.StatusCode != 200 {
		t.Fatalf("discovery: %d %v", resp.StatusCode, err)
	}
	if doc.Issuer != iss.Issuer() || doc.JWKSURI == "" {
		t.Errorf("discovery names issuer %q (want %q), keys at %q", doc.Issuer, iss.Issuer(), doc.JWKSURI)
	}
}
