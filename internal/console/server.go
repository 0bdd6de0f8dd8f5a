package console

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/time/rate"

	"github.com/hookbridge/hookbridge/consumer"
	"github.com/hookbridge/hookbridge/relay"
)

// Queue is what the console needs of a queue backend: browsing, and the
// dead-letter operations of package consumer. Both relay backends provide
// it.
type Queue interface {
	consumer.DeadLetterQueue
	Summarizer
	// Find returns the messages matching q, queue and dead-letter queue
	// merged, in enqueue order.
	Find(ctx context.Context, q relay.FindQuery) (relay.FindResult, error)
	// Peek returns one message, or an error wrapping relay.ErrNotFound.
	Peek(ctx context.Context, ref relay.MessageRef) (relay.BrowsedMessage, error)
}

// Summarizer summarizes a queue: the main queue, or a spool.
type Summarizer interface {
	Summary(ctx context.Context, opts relay.SummaryOptions) (relay.QueueSummary, error)
}

// Config configures the console. Zero values take the defaults noted.
type Config struct {
	// Queue is the queue to show. Required.
	Queue Queue
	// QueueName is how the queue is named on every page (its URL, without
	// secrets).
	QueueName string
	// Spool, if set, is the store-and-forward spool of a Service Bus
	// ingress, shown on the overview; SpoolName names it.
	Spool     Summarizer
	SpoolName string
	// MetricsFrom are admin listeners' /metrics URLs, scraped for live rates.
	MetricsFrom []string
	// MetricsInterval is how often they are scraped. Default 10s.
	MetricsInterval time.Duration
	// Tokens, when any, are required to log in; without them the console
	// answers only requests addressed to a loopback name.
	Tokens []Token
	// TrustedProxies are the reverse proxies in front of the console
	// (ParseTrustedProxies): a request from one of them is attributed to
	// the client its X-Forwarded-For names, for the per-client login limit
	// and the action logs. Without any, the TCP peer is the client.
	TrustedProxies []netip.Prefix
	// Logger receives one line per action (replay, purge, login). Default:
	// discarded.
	Logger *slog.Logger
}

// DefaultMetricsInterval is Config.MetricsInterval's default.
const DefaultMetricsInterval = 10 * time.Second

// Validate reports the first invalid setting.
func (c Config) Validate() error {
	if c.Queue == nil {
		return errors.New("console: no queue")
	}
	for _, u := range c.MetricsFrom {
		p, err := url.Parse(u)
		if err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
			return fmt.Errorf("console: metrics URL %q: use the admin listener's http://host:port/metrics", u)
		}
	}
	if c.MetricsInterval < 0 || (c.MetricsInterval > 0 && c.MetricsInterval < time.Second) {
		return fmt.Errorf("console: metrics interval %s: use 1s or more", c.MetricsInterval)
	}
	for _, t := range c.Tokens {
		if len(t.Secret) < MinTokenLength {
			return fmt.Errorf("console: a token is shorter than %d characters", MinTokenLength)
		}
	}
	return nil
}

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Server is the console: an http.Handler, and background scraping of the
// metrics sources (Run).
type Server struct {
	cfg     Config
	log     *slog.Logger
	auth    *auth
	pages   pages
	scraper *scraper
	// loginLimits bound each client address's login attempts, so that one
	// client guessing tokens cannot keep the others out; loginLimit bounds
	// them across all clients, against guessing from many addresses.
	loginLimits *lru.Cache[string, *rate.Limiter]
	loginLimit  *rate.Limiter
	mux         *http.ServeMux
	now         func() time.Time
	// stopping ends with StopActions.
	stopping    context.Context
	stopActions context.CancelFunc
}

// New builds a console.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.MetricsInterval == 0 {
		cfg.MetricsInterval = DefaultMetricsInterval
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	a, err := newAuth(cfg.Tokens)
	if err != nil {
		return nil, err
	}
	p, err := parsePages()
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg: cfg, log: log, auth: a, pages: p,
		loginLimit: rate.NewLimiter(rate.Every(20*time.Millisecond), 100),
		now:        time.Now,
	}
	s.loginLimits, _ = lru.New[string, *rate.Limiter](loginClients) // size > 0: no error
	s.stopping, s.stopActions = context.WithCancel(context.Background())
	if len(cfg.MetricsFrom) > 0 {
		s.scraper = newScraper(cfg.MetricsFrom, cfg.MetricsInterval)
	}
	s.routes()
	return s, nil
}

// StopActions ends the replays and purges in progress at their next chunk,
// for a shutdown: the chunk in hand is finished or given back, so no
// message is both replayed and left in the dead-letter queue. Call it when the listener
// starts shutting down; the actions' handlers then return within the time a
// chunk's settlements take.
func (s *Server) StopActions() { s.stopActions() }

// Run scrapes the metrics sources until ctx ends; it returns nil then. It
// returns at once when there are none.
func (s *Server) Run(ctx context.Context) error {
	if s.scraper == nil {
		return nil
	}
	s.scraper.run(ctx)
	return nil
}

func (s *Server) routes() {
	s.mux = http.NewServeMux()
	static, _ := fs.Sub(staticFS, "static")
	files := http.FileServerFS(static)
	s.mux.Handle("GET /static/", http.StripPrefix("/static/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "private, max-age=3600")
		files.ServeHTTP(w, r)
	})))
	// No icon: an empty answer rather than a 404 in every browser's log.
	s.mux.HandleFunc("GET /favicon.ico", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) })
	handle := func(pattern string, h handlerFunc) { s.mux.Handle(pattern, s.wrap(h)) }
	handle("GET /{$}", s.overview)
	handle("GET /find", s.find)
	handle("GET /dlq", s.deadLetters)
	handle("GET /dlq/{seq}", s.deadLetter)
	handle("GET /messages/{seq}", s.message)
	handle("POST /dlq/replay", s.replay)
	handle("POST /dlq/purge", s.purge)
	handle("GET /login", s.loginPage)
	handle("POST /login", s.login)
	handle("POST /logout", s.logout)
}

// maxFormBytes bounds a POST body: a selection of maxAction sequence
// numbers and the filters fit many times over.
const maxFormBytes = 1 << 20

// ServeHTTP applies the security headers and checks, then routes.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	// same-origin, not no-referrer: with no-referrer browsers send "Origin: null"
	// on form posts, and the origin check could not tell our own pages.
	h.Set("Referrer-Policy", "same-origin")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	h.Set("Cross-Origin-Resource-Policy", "same-origin")
	if !s.auth.required() && !loopbackHost(r.Host) {
		// Without a token only loopback names are answered (see loopbackHost).
		h.Set("Cache-Control", "no-store")
		http.Error(w, fmt.Sprintf("This console answers only loopback addresses (http://127.0.0.1 or http://localhost), not %q: requests to another name could come from a web page pointed at this machine. To reach it remotely, set HOOKBRIDGE_CONSOLE_TOKEN.", r.Host), http.StatusForbidden)
		return
	}
	// Another site (another port of localhost included) may link to a page,
	// but not have the browser fetch one behind the operator's back: each
	// costs a scan of the queue, and on Service Bus some take a session's
	// lock for a moment.
	if site := r.Header.Get("Sec-Fetch-Site"); (site == "cross-site" || site == "same-site") && r.Header.Get("Sec-Fetch-Mode") != "navigate" {
		h.Set("Cache-Control", "no-store")
		http.Error(w, "This console does not answer requests another site makes in the background; open it directly.", http.StatusForbidden)
		return
	}
	s.mux.ServeHTTP(w, r)
}

// request is what every handler knows of the request beyond *http.Request.
type request struct {
	*http.Request
	sid      string // session ID (cookie)
	identity string // who is logged in; "" without tokens
	client   client
}

// who describes the requester for action logs: client address (and the
// proxy it came through) and identity, never a token.
func (r *request) who() []any {
	attrs := []any{"remote_addr", r.client.addr}
	if r.client.via != "" {
		attrs = append(attrs, "via", r.client.via)
	}
	if r.identity != "" { // without tokens: whoever reaches loopback
		attrs = append(attrs, "identity", r.identity)
	}
	return attrs
}

type handlerFunc func(w http.ResponseWriter, r *request) error

// httpError is an error with the status to answer and a message for the
// operator.
type httpError struct {
	status int
	msg    string
}

func (e *httpError) Error() string { return e.msg }

func errorf(status int, format string, args ...any) error {
	return &httpError{status: status, msg: fmt.Sprintf(format, args...)}
}

// wrap gives a handler its session, enforces login and, on POST, the form
// size, same-origin and CSRF checks, and renders a returned error.
func (s *Server) wrap(h handlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, hr *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		r := &request{Request: hr, sid: sessionID(hr), client: clientOf(hr, s.cfg.TrustedProxies)}
		if r.sid == "" {
			r.sid = newSessionID()
			setSessionCookie(w, hr, r.sid, 0)
		}
		public := hr.URL.Path == "/login"
		if s.auth.required() {
			id, ok := s.auth.identity(r.sid, s.now())
			if !ok && !public {
				if hr.Method == http.MethodGet {
					http.Redirect(w, hr, "/login?next="+url.QueryEscape(hr.URL.RequestURI()), http.StatusSeeOther)
					return
				}
				s.renderError(w, r, errorf(http.StatusUnauthorized, "Your session has ended. Log in again, then repeat the action."))
				return
			}
			r.identity = id
		}
		if hr.Method == http.MethodPost {
			hr.Body = http.MaxBytesReader(w, hr.Body, maxFormBytes)
			if err := hr.ParseForm(); err != nil {
				s.renderError(w, r, errorf(http.StatusRequestEntityTooLarge, "The form could not be read (%v): select fewer messages, or use hookbridge dlq.", err))
				return
			}
			if err := sameOrigin(hr); err != nil {
				s.renderError(w, r, errorf(http.StatusForbidden, "%v", err))
				return
			}
			if !s.auth.validCSRF(r.sid, hr.PostForm.Get("csrf")) {
				s.renderError(w, r, errorf(http.StatusForbidden, "The form's security token is missing or stale (the console restarted, or the page came from elsewhere). Reload the page and try again."))
				return
			}
		}
		if err := h(w, r); err != nil {
			s.renderError(w, r, err)
		}
	})
}

// Handler returns the console as an http.Handler.
func (s *Server) Handler() http.Handler { return s }

func (s *Server) renderError(w http.ResponseWriter, r *request, err error) {
	var he *httpError
	if !errors.As(err, &he) {
		he = &httpError{status: http.StatusInternalServerError, msg: err.Error()}
		if errors.Is(err, relay.ErrUnavailable) {
			he.status = http.StatusServiceUnavailable
		}
	}
	if he.status >= 500 {
		s.log.Error("console: request failed", "method", r.Method, "path", r.URL.Path, "error", err)
	}
	s.render(w, r, he.status, "error", "Error", struct{ Message string }{he.msg})
}

func (s *Server) login(w http.ResponseWriter, r *request) error {
	next := safeNext(r.PostForm.Get("next"))
	if !s.auth.required() {
		http.Redirect(w, r.Request, next, http.StatusSeeOther)
		return nil
	}
	if !s.allowLogin(r.client.addr) {
		return errorf(http.StatusTooManyRequests, "Too many login attempts; wait a few seconds and try again.")
	}
	identity, ok := s.auth.check(r.PostForm.Get("token"))
	if !ok {
		s.log.Warn("console: login refused", r.who()...)
		return s.renderLogin(w, r, http.StatusUnauthorized, next, "That token is not accepted. Paste the value of HOOKBRIDGE_CONSOLE_TOKEN (without a name: prefix).")
	}
	// A new session ID at login, so an ID planted before cannot be used.
	sid := newSessionID()
	s.auth.addLogin(sid, identity, s.now())
	setSessionCookie(w, r.Request, sid, int(sessionTTL.Seconds()))
	r.identity = identity
	s.log.Info("console: login", r.who()...)
	http.Redirect(w, r.Request, next, http.StatusSeeOther)
	return nil
}

// loginClients is how many client addresses' login limits are remembered
// (the least recently seen are forgotten first).
const loginClients = 4096

// allowLogin reports whether a login attempt from the client at host may go ahead:
// 10 at once, then 5 a second, for each client address, and 100 at once,
// then 50 a second, for all. A client over its own limit does not use up
// the others'.
func (s *Server) allowLogin(host string) bool {
	fresh := rate.NewLimiter(rate.Every(200*time.Millisecond), 10)
	l, found, _ := s.loginLimits.PeekOrAdd(host, fresh)
	if !found {
		l = fresh
	}
	return l.Allow() && s.loginLimit.Allow()
}

func (s *Server) logout(w http.ResponseWriter, r *request) error {
	s.auth.logout(r.sid)
	setSessionCookie(w, r.Request, "", -1)
	s.log.Info("console: logout", r.who()...)
	http.Redirect(w, r.Request, "/login", http.StatusSeeOther)
	return nil
}

func (s *Server) loginPage(w http.ResponseWriter, r *request) error {
	next := safeNext(r.URL.Query().Get("next"))
	if !s.auth.required() {
		http.Redirect(w, r.Request, next, http.StatusSeeOther)
		return nil
	}
	return s.renderLogin(w, r, http.StatusOK, next, "")
}

func (s *Server) renderLogin(w http.ResponseWriter, r *request, status int, next, msg string) error {
	s.render(w, r, status, "login", "Log in", struct{ Next, Error string }{next, msg})
	return nil
}

// safeNext keeps a post-login redirect on this console: a path, with no
// backslash or control character, which browsers drop or read as "/"
// (so that "/<tab>/evil.example" would leave the console).
func safeNext(next string) string {
	bad := strings.ContainsFunc(next, func(r rune) bool { return r < 0x20 || r == 0x7f || r == '\\' })
	if bad || !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") {
		return "/"
	}
	return next
}
