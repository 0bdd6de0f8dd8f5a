package ingress

import (
	"net/http"
	"strings"
	"time"
)

// Verifier proves where a request came from. Verify inspects the request's
// headers and URL (never its body) and returns what it accepted, or an
// *Error: 401 for bad credentials, 503 when it cannot decide yet (signing
// keys not loaded). Verify may remove the secrets it consumed from the
// request's URL, so nothing downstream sees them. Implementations are safe
// for concurrent use.
type Verifier interface {
	// Name is recorded in each event's hookbridgeverifier extension, e.g.
	// "acs-jwt" or "api-key".
	Name() string
	Verify(r *http.Request) (Credential, error)
	// Ready reports whether the verifier can decide (keys loaded).
	Ready() bool
}

// Credential is what a verifier accepted.
type Credential struct {
	// Token is the bearer token a JWT verifier checked; empty for other
	// verifiers. The replay defence binds it to the body it delivered.
	Token string
	// Expires is when the credential stops being acceptable (a JWT's exp
	// plus the verifier's leeway); zero if it does not expire.
	Expires time.Time
	// JTI is the token's unique identifier claim (jti), empty when it has
	// none. The replay defence refuses a token with a jti that comes back
	// with another body: such a token is never issued twice.
	JTI string
}

// Verifier names, as recorded in the hookbridgeverifier extension.
const (
	VerifierACS       = "acs-jwt"
	VerifierEntra     = "entra-jwt"
	VerifierAPIKey    = "api-key"
	VerifierSignedURL = "signed-url"
	VerifierInsecure  = "insecure"
)

// bearerVerifier marks verifiers that read an Authorization: Bearer token.
// On Event Grid handshakes, which enqueue nothing, such a verifier is
// skipped when no Authorization header is present (Microsoft does not say
// that handshakes carry the token), and enforced when one is.
type bearerVerifier interface {
	Verifier
	bearer()
}

// verifierNames joins the names of vs as recorded in events.
func verifierNames(vs []Verifier) string {
	names := make([]string, len(vs))
	for i, v := range vs {
		names[i] = v.Name()
	}
	return strings.Join(names, "+")
}
