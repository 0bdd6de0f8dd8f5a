package spool

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Config configures a spool. Zero values take the defaults noted.
type Config struct {
	// After is how long a direct send to the primary may take: past it the
	// send is cancelled and its messages are committed to the spool instead.
	// The cancelled send's outcome is unknown; forwarding the spooled copies
	// later is deduplicated by MessageID. Default 1s: a healthy Service Bus
	// send takes milliseconds and the SDK's first retries of a brief blip
	// (0.2s, then 0.4s apart) fit in it, while the sender still gets its
	// answer within a second or two.
	After time.Duration
	// MaxMessages bounds the spool: a commit that would take it past this
	// many messages fails with an error wrapping relay.ErrUnavailable and
	// ErrFull (503 with Retry-After). Default 100,000.
	MaxMessages int64
	// ForwardBatch is the most messages one forwarding send carries.
	// Default 256.
	ForwardBatch int
	// SendTimeout bounds one forwarding send. Default 5s.
	SendTimeout time.Duration
	// RetryMin and RetryMax bound the forwarder's wait between failed
	// sends, doubling from RetryMin. Defaults 100ms and 5s.
	RetryMin, RetryMax time.Duration
	// Cooldown is how long after a failed send new events go straight to
	// the spool without trying the primary first (so that not every request
	// waits After during an outage), unless the forwarder gets through
	// sooner. Default 5s.
	Cooldown time.Duration
	// Poll is how often an idle forwarder re-checks the store (a crashed
	// run's messages come back when their locks expire). Default 1s.
	Poll time.Duration
	// Logger receives the spool's log lines. Default: discard.
	Logger *slog.Logger
	// Registerer, when set, gets the spool's metrics.
	Registerer prometheus.Registerer
}

// Defaults.
const (
	DefaultAfter        = time.Second
	DefaultMaxMessages  = 100_000
	DefaultForwardBatch = 256
	DefaultSendTimeout  = 5 * time.Second
	DefaultRetryMin     = 100 * time.Millisecond
	DefaultRetryMax     = 5 * time.Second
	DefaultCooldown     = 5 * time.Second
	DefaultPoll         = time.Second
)

func (c *Config) setDefaults() {
	if c.After == 0 {
		c.After = DefaultAfter
	}
	if c.MaxMessages == 0 {
		c.MaxMessages = DefaultMaxMessages
	}
	if c.ForwardBatch == 0 {
		c.ForwardBatch = DefaultForwardBatch
	}
	if c.SendTimeout == 0 {
		c.SendTimeout = DefaultSendTimeout
	}
	if c.RetryMin == 0 {
		c.RetryMin = DefaultRetryMin
	}
	if c.RetryMax == 0 {
		c.RetryMax = max(DefaultRetryMax, c.RetryMin)
	}
	if c.Cooldown == 0 {
		c.Cooldown = DefaultCooldown
	}
	if c.Poll == 0 {
		c.Poll = DefaultPoll
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Validate reports the first invalid setting (zero values take defaults).
func (c Config) Validate() error {
	switch {
	case c.After < 0 || (c.After > 0 && c.After < time.Millisecond) || c.After > time.Minute:
		return fmt.Errorf("spool: after %s: must be between 1ms and 1m (how long a direct send may take before its events are spooled)", c.After)
	case c.MaxMessages < 0:
		return fmt.Errorf("spool: max messages %d: must not be negative", c.MaxMessages)
	case c.ForwardBatch < 0 || c.ForwardBatch > 10_000:
		return fmt.Errorf("spool: forward batch %d: must be between 1 and 10000", c.ForwardBatch)
	case c.SendTimeout < 0:
		return fmt.Errorf("spool: send timeout %s: must not be negative", c.SendTimeout)
	case c.RetryMin < 0 || c.RetryMax < 0 || (c.RetryMin > 0 && c.RetryMax > 0 && c.RetryMax < c.RetryMin):
		return fmt.Errorf("spool: retry %s to %s: must be positive, the maximum at least the minimum", c.RetryMin, c.RetryMax)
	case c.Cooldown < 0:
		return fmt.Errorf("spool: cooldown %s: must not be negative", c.Cooldown)
	case c.Poll < 0:
		return fmt.Errorf("spool: poll %s: must not be negative", c.Poll)
	}
	return nil
}
