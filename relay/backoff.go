package relay

import (
	"math/rand/v2"
	"time"
)

// Backoff is the wait before retry number attempt (1 for the first retry):
// base doubled for each earlier attempt, capped at limit, then jittered down
// to as little as half, so that many retries started together spread out.
// It is the one retry schedule of hookbridge's loops: redelivery of a failed
// event, a receive or session accept that keeps failing, the spool's
// forwarding to Service Bus, and loading an issuer's signing keys. A non-positive
// base or limit gives 0.
func Backoff(attempt int, base, limit time.Duration) time.Duration {
	if base <= 0 || limit <= 0 {
		return 0
	}
	d := min(base, limit)
	for i := 1; i < attempt && d < limit; i++ {
		d *= 2
	}
	d = min(d, limit)
	return d/2 + rand.N(d/2+1)
}
