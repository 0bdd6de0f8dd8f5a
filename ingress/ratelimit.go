package ingress

import (
	"net/http"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"github.com/labstack/echo/v4"
	"golang.org/x/time/rate"
)

// clientLimiter is a token bucket per client IP, for at most maxClients
// clients at once: an LRU (hashicorp/golang-lru's simplelru) forgets the
// least recently seen client when a new one arrives.
type clientLimiter struct {
	limit rate.Limit
	burst int

	mu      sync.Mutex
	clients *simplelru.LRU[string, *rate.Limiter]
}

const maxClients = 10_000

func newClientLimiter(perSecond float64, burst int) *clientLimiter {
	clients, _ := simplelru.NewLRU[string, *rate.Limiter](maxClients, nil) // size > 0: no error
	return &clientLimiter{limit: rate.Limit(perSecond), burst: burst, clients: clients}
}

// allow takes a token for ip, or says how long until one is available.
func (l *clientLimiter) allow(ip string, now time.Time) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	lim, ok := l.clients.Get(ip)
	if !ok {
		lim = rate.NewLimiter(l.limit, l.burst)
		l.clients.Add(ip, lim)
	}
	r := lim.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return false, d
	}
	return true, 0
}

// limitRate answers 429 with Retry-After to clients over their rate.
func (s *Server) limitRate(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if ok, wait := s.limiter.allow(c.RealIP(), time.Now()); !ok {
			return &Error{Status: http.StatusTooManyRequests, Cause: CauseRateLimited, Message: "too many requests from this client; retry later", RetryAfter: wait}
		}
		return next(c)
	}
}
