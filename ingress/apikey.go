package ingress

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"strings"
)

// MinAPIKeyLength is the shortest API key accepted in configuration.
const MinAPIKeyLength = 16

// HeaderAPIKey carries an API key; the key query parameter works too (Event
// Grid and Call Automation can only be given a URL).
const HeaderAPIKey = "X-Api-Key"

// APIKeyVerifier accepts a request that carries one of its keys, in the key
// query parameter or the X-Api-Key header. Several keys may be active at
// once, for rotation. Keys are compared in constant time, and the key
// parameter is removed from the request's URL once checked, so nothing
// downstream (logs included) sees it.
type APIKeyVerifier struct {
	digests [][32]byte
}

// NewAPIKeyVerifier returns a verifier for keys (at least one, each at least
// MinAPIKeyLength characters).
func NewAPIKeyVerifier(keys []string) (*APIKeyVerifier, error) {
	if len(keys) == 0 {
		return nil, errors.New("api key verifier: no keys")
	}
	v := &APIKeyVerifier{}
	for i, k := range keys {
		if len(k) < MinAPIKeyLength {
			return nil, fmt.Errorf("api key %d is %d characters; use at least %d random characters", i+1, len(k), MinAPIKeyLength)
		}
		v.digests = append(v.digests, sha256.Sum256([]byte(k)))
	}
	return v, nil
}

// ParseAPIKeys splits a comma-separated key list, ignoring blanks.
func ParseAPIKeys(s string) []string {
	var keys []string
	for _, k := range strings.Split(s, ",") {
		if k = strings.TrimSpace(k); k != "" {
			keys = append(keys, k)
		}
	}
	return keys
}

// Name implements Verifier.
func (v *APIKeyVerifier) Name() string { return VerifierAPIKey }

// Ready implements Verifier: keys are always loaded.
func (v *APIKeyVerifier) Ready() bool { return true }

// Verify checks the request's API key.
func (v *APIKeyVerifier) Verify(r *http.Request) (Credential, error) {
	key := r.Header.Get(HeaderAPIKey)
	q := r.URL.Query()
	if key == "" {
		key = q.Get("key")
	}
	if q.Has("key") {
		q.Del("key")
		r.URL.RawQuery = q.Encode()
	}
	if key == "" {
		return Credential{}, denied(CauseMissingCredentials, "missing API key; send it in the key query parameter or the X-Api-Key header", nil)
	}
	d := sha256.Sum256([]byte(key))
	match := 0
	for i := range v.digests { // every key, always: no early exit to time
		match |= subtle.ConstantTimeCompare(d[:], v.digests[i][:])
	}
	if match != 1 {
		return Credential{}, denied(CauseInvalidAPIKey, "invalid API key", nil)
	}
	return Credential{}, nil
}
