package console

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
)

// Token is one accepted console token. Name, when set, is the identity
// actions are logged under; the secret is never logged or rendered.
type Token struct {
	Name   string
	Secret string
}

// MinTokenLength is the shortest token accepted.
const MinTokenLength = 16

// ParseTokens reads HOOKBRIDGE_CONSOLE_TOKEN's value: comma-separated
// entries, each a token or name:token (the name is the identity logged for
// actions taken with it).
func ParseTokens(s string) ([]Token, error) {
	var out []Token
	for i, entry := range strings.Split(s, ",") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		t := Token{Secret: entry}
		if name, secret, ok := strings.Cut(entry, ":"); ok && validName(name) {
			t = Token{Name: name, Secret: secret}
		}
		if len(t.Secret) < MinTokenLength {
			return nil, fmt.Errorf("console token %d is %d characters long; use at least %d random characters (e.g. openssl rand -hex 32)", i+1, len(t.Secret), MinTokenLength)
		}
		out = append(out, t)
	}
	return out, nil
}

func validName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("._@-", r)) {
			return false
		}
	}
	return true
}

// cookieName holds the browser's session ID: a random value that names an
// authenticated session on the server (when tokens are configured) and
// from which the session's CSRF token is derived.
const cookieName = "hookbridge_console"

// sessionTTL is how long a login lasts.
const sessionTTL = 12 * time.Hour

// maxSessions bounds the logins remembered; the least recently used is
// forgotten first.
const maxSessions = 1024

// auth keeps logins and derives CSRF tokens. CSRF tokens need no state:
// each is an HMAC of the session ID under a key made at start, so a form
// can only be posted by a page this server rendered for that browser.
type auth struct {
	tokens []Token
	key    []byte
	// logins maps an authenticated session ID to who logged in. The plain
	// LRU (no background expiry goroutine) with expiry checked on read.
	logins *lru.Cache[string, login]
	mu     sync.Mutex
}

type login struct {
	identity string
	expires  time.Time
}

func newAuth(tokens []Token) (*auth, error) {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("console: random key: %w", err)
	}
	logins, err := lru.New[string, login](maxSessions)
	if err != nil {
		return nil, err
	}
	return &auth{tokens: tokens, key: key, logins: logins}, nil
}

func (a *auth) required() bool { return len(a.tokens) > 0 }

// check returns the identity of a token, comparing with every configured
// one in constant time.
func (a *auth) check(given string) (identity string, ok bool) {
	g := sha256.Sum256([]byte(given))
	for _, t := range a.tokens {
		s := sha256.Sum256([]byte(t.Secret))
		if subtle.ConstantTimeCompare(g[:], s[:]) == 1 && !ok {
			identity, ok = t.Name, true
			if identity == "" {
				identity = "token"
			}
		}
	}
	return identity, ok
}

func newSessionID() string {
	b := make([]byte, 32)
	rand.Read(b) // never fails (crypto/rand panics rather)
	return hex.EncodeToString(b)
}

// csrfToken is the CSRF token of session id.
func (a *auth) csrfToken(id string) string {
	m := hmac.New(sha256.New, a.key)
	m.Write([]byte("csrf\x00" + id))
	return hex.EncodeToString(m.Sum(nil))
}

func (a *auth) validCSRF(id, given string) bool {
	return id != "" && subtle.ConstantTimeCompare([]byte(a.csrfToken(id)), []byte(given)) == 1
}

// identity returns who session id logged in as.
func (a *auth) identity(id string, now time.Time) (string, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	l, ok := a.logins.Get(id)
	if !ok {
		return "", false
	}
	if now.After(l.expires) {
		a.logins.Remove(id)
		return "", false
	}
	return l.identity, true
}

func (a *auth) addLogin(id, identity string, now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.logins.Add(id, login{identity: identity, expires: now.Add(sessionTTL)})
}

func (a *auth) logout(id string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.logins.Remove(id)
}

// setSessionCookie sets the session cookie, Secure when the browser reached
// the console over TLS: its own, or a reverse proxy's that says so in
// X-Forwarded-Proto. (A client that sends that header over plain HTTP only
// makes its own cookie one its browser will not send back.) SameSite=Lax,
// not Strict: a link to the console from an alert or a chat message must
// open the page logged in, where Strict withheld the cookie and the console
// answered with a new, logged-out session. Another site's form posts and
// fetches still go without the cookie, and would fail the CSRF, Origin and
// Sec-Fetch-Site checks besides.
func setSessionCookie(w http.ResponseWriter, r *http.Request, id string, maxAge int) {
	http.SetCookie(w, &http.Cookie{
		Name: cookieName, Value: id, Path: "/", MaxAge: maxAge,
		HttpOnly: true, SameSite: http.SameSiteLaxMode,
		Secure: r.TLS != nil || strings.EqualFold(r.Header.Get("X-Forwarded-Proto"), "https"),
	})
}

func sessionID(r *http.Request) string {
	c, err := r.Cookie(cookieName)
	if err != nil || len(c.Value) != 64 {
		return ""
	}
	if _, err := hex.DecodeString(c.Value); err != nil {
		return ""
	}
	return c.Value
}

// sameOrigin checks the browser's Origin and Sec-Fetch-Site headers of a
// POST, when present (browsers always send them; command-line clients may
// not, and still need the CSRF token).
func sameOrigin(r *http.Request) error {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" {
		return errCrossSite
	}
	if origin := r.Header.Get("Origin"); origin != "" {
		if origin != "http://"+r.Host && origin != "https://"+r.Host {
			return errCrossSite
		}
	}
	return nil
}

// loopbackHost reports whether the request's Host names this machine's
// loopback. A console without a token answers only those: a web page
// whose domain an attacker points at 127.0.0.1 (DNS rebinding) sends its
// own name as Host, and is refused.
func loopbackHost(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if strings.EqualFold(host, "localhost") || strings.HasSuffix(strings.ToLower(host), ".localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// IsLoopbackListen reports whether a listen address binds loopback only.
func IsLoopbackListen(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil || host == "" {
		return false // ":9092" binds every interface
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
