package ingress

import (
	"sync"
	"time"

	"github.com/labstack/echo/v4"
	"golang.org/x/time/rate"
)

// clientLimiter is a token bucket per client IP, for at most maxClients
// clients at once (the least recently seen are forgotten).
type clientLimiter struct {
	limit rate.Limit
	burst int

	mu      sync.Mutex
	clients map[string]*clientBucket
}

type clientBucket struct {
	lim  *rate.Limiter
	seen time.Time
}

const maxClients = 10_000

func newClientLimiter(perSecond float64, burst int) *clientLimiter {
	return &clientLimiter{limit: rate.Limit(perSecond), burst: burst, clients: make(map[string]*clientBucket)}
}

// allow takes a token for ip, or says how long until one is available.
func (l *clientLimiter) allow(ip string, now time.Time) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.clients[ip]
	if !ok {
		if len(l.clients) >= maxClients {
			l.forget(now)
		}
		b = &clientBucket{lim: rate.NewLimiter(l.limit, l.burst)}
		l.clients[ip] = b
	}
	b.seen = now
	r := b.lim.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return false, d
	}
	return true, 0
}

// forget drops clients idle for a minute, or else half of them.
func (l *clientLimiter) forget(now time.Time) {
	for ip, b := range l.clients {
		if now.Sub(b.seen) > time.Minute {
			delete(l.clients, ip)
		}
	}
	for ip := range l.clients {
		if len(l.clients) < maxClients/2 {
			break
		}
		delete(l.clients, ip)
	}
}

// limitRate answers 429 with Retry-After to clients over their rate.
func (s *Server) limitRate(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if ok, wait := s.limiter.allow(c.RealIP(), time.Now()); !ok {
			return &Error{Status: 429, Cause: CauseRateLimited, Message: "too many requests from this client; retry later", RetryAfter: wait}
		}
		return next(c)
	}
}
