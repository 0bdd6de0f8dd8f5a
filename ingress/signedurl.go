package ingress

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Query parameters of a signed callback URL.
const (
	ParamExpires   = "hbexp"
	ParamKeyID     = "hbkid"
	ParamSignature = "hbsig"
)

// MinSigningKeyLength is the shortest callback signing secret accepted.
const MinSigningKeyLength = 32

// CallbackKey is a callback-URL signing key: an ID, carried in the URL so
// keys can rotate, and an HMAC-SHA256 secret.
type CallbackKey struct {
	ID     string
	Secret []byte
}

// ParseCallbackKeys reads "keyid:secret,keyid:secret,…"
// (HOOKBRIDGE_CALLBACK_SIGNING_KEYS). The first key signs; all verify.
func ParseCallbackKeys(s string) ([]CallbackKey, error) {
	var keys []CallbackKey
	seen := map[string]bool{}
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		id, secret, ok := strings.Cut(item, ":")
		switch {
		case !ok || id == "" || secret == "":
			return nil, errors.New("callback signing keys: each entry must be keyid:secret")
		case strings.ContainsAny(id, "&=?# "):
			return nil, fmt.Errorf("callback signing key ID %q: use letters, digits, - and _", id)
		case len(secret) < MinSigningKeyLength:
			return nil, fmt.Errorf("callback signing key %q: the secret is %d characters; use at least %d random characters", id, len(secret), MinSigningKeyLength)
		case seen[id]:
			return nil, fmt.Errorf("callback signing key ID %q appears twice", id)
		}
		seen[id] = true
		keys = append(keys, CallbackKey{ID: id, Secret: []byte(secret)})
	}
	if len(keys) == 0 {
		return nil, errors.New("callback signing keys: none given")
	}
	return keys, nil
}

// SignCallbackURL returns base with an expiry, the key ID and an HMAC
// signature added to its query: the callback URI to pass when answering or
// creating a call. The signature covers the expiry, the key ID and every
// other query parameter, not the scheme, host or path, so it survives a
// reverse proxy that rewrites them.
func SignCallbackURL(base string, key CallbackKey, expires time.Time) (string, error) {
	u, err := url.Parse(base)
	if err != nil || !u.IsAbs() || (u.Scheme != "https" && u.Scheme != "http") {
		return "", fmt.Errorf("callback base %q: must be an absolute http(s) URL", base)
	}
	q := u.Query()
	for _, p := range []string{ParamExpires, ParamKeyID, ParamSignature} {
		q.Del(p)
	}
	exp := strconv.FormatInt(expires.Unix(), 10)
	q.Set(ParamExpires, exp)
	q.Set(ParamKeyID, key.ID)
	q.Set(ParamSignature, signature(key.Secret, q))
	u.RawQuery = q.Encode()
	return u.String(), nil
}

// signature is the HMAC-SHA256 over a canonical form of the query: the
// parameters other than the signature, sorted, each name=value line
// percent-encoded.
func signature(secret []byte, q url.Values) string {
	names := make([]string, 0, len(q))
	for n := range q {
		if n != ParamSignature {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte("hookbridge-callback-v1\n"))
	for _, n := range names {
		for _, v := range q[n] {
			mac.Write([]byte(url.QueryEscape(n) + "=" + url.QueryEscape(v) + "\n"))
		}
	}
	return base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
}

// signedWithoutAPIKey reports whether sig signs q without its API key: a
// key appended to the URL after signing. The key is checked on its own (by
// APIKeyVerifier), so leaving it out of the signature gives nothing away.
func signedWithoutAPIKey(secret []byte, q url.Values, sig string) bool {
	if !q.Has("key") {
		return false
	}
	rest := maps.Clone(q)
	delete(rest, "key")
	return hmac.Equal([]byte(sig), []byte(signature(secret, rest)))
}

// SignedURLVerifier accepts requests to a URL made by SignCallbackURL with
// one of its keys, before the URL's expiry. The signature parameters are
// removed from the request's URL once checked.
type SignedURLVerifier struct {
	keys map[string][]byte
}

// NewSignedURLVerifier returns a verifier for keys.
func NewSignedURLVerifier(keys []CallbackKey) (*SignedURLVerifier, error) {
	if len(keys) == 0 {
		return nil, errors.New("signed URL verifier: no keys")
	}
	v := &SignedURLVerifier{keys: map[string][]byte{}}
	for _, k := range keys {
		v.keys[k.ID] = k.Secret
	}
	return v, nil
}

// Name implements Verifier.
func (v *SignedURLVerifier) Name() string { return VerifierSignedURL }

// Ready implements Verifier.
func (v *SignedURLVerifier) Ready() bool { return true }

// Verify checks the request URL's signature and expiry.
func (v *SignedURLVerifier) Verify(r *http.Request) (Credential, error) {
	exp, err := v.check(r.URL.RawQuery, time.Now())
	if err != nil {
		return Credential{}, err
	}
	q := r.URL.Query()
	for _, p := range []string{ParamExpires, ParamKeyID, ParamSignature} {
		q.Del(p)
	}
	r.URL.RawQuery = q.Encode()
	return Credential{Expires: exp}, nil
}

// check verifies a raw query string at now and returns its expiry.
func (v *SignedURLVerifier) check(rawQuery string, now time.Time) (time.Time, error) {
	q, err := url.ParseQuery(rawQuery)
	if err != nil {
		return time.Time{}, denied(CauseInvalidSignature, "malformed callback URL query", err)
	}
	sig, kid, expRaw := q.Get(ParamSignature), q.Get(ParamKeyID), q.Get(ParamExpires)
	if sig == "" || kid == "" || expRaw == "" || len(q[ParamSignature]) != 1 || len(q[ParamKeyID]) != 1 || len(q[ParamExpires]) != 1 {
		return time.Time{}, denied(CauseMissingCredentials, "callback URL is not signed; create it with hookbridge callback-url", nil)
	}
	secret, ok := v.keys[kid]
	if !ok {
		return time.Time{}, denied(CauseInvalidSignature, "callback URL signed with an unknown key", fmt.Errorf("key ID %q", kid))
	}
	if !hmac.Equal([]byte(sig), []byte(signature(secret, q))) && !signedWithoutAPIKey(secret, q, sig) {
		return time.Time{}, denied(CauseInvalidSignature, "callback URL signature does not match", nil)
	}
	secs, err := strconv.ParseInt(expRaw, 10, 64)
	if err != nil {
		return time.Time{}, denied(CauseInvalidSignature, "malformed callback URL expiry", nil)
	}
	exp := time.Unix(secs, 0)
	if !now.Before(exp) {
		return time.Time{}, denied(CauseURLExpired, "callback URL expired; sign a new one for new calls", fmt.Errorf("expired at %s", exp.UTC().Format(time.RFC3339)))
	}
	return exp, nil
}
