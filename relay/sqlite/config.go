package sqlite

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Config configures the embedded queue. Zero values take the defaults noted.
type Config struct {
	// Path is the database file. Required.
	Path string
	// LockDuration is how long a received message stays locked before it is
	// handed out again. Default 60s (Service Bus's default).
	LockDuration time.Duration
	// MaxDeliveryCount is how many deliveries a message gets before it is
	// dead-lettered with reason MaxDeliveryCountExceeded. Default 10.
	MaxDeliveryCount int
	// DuplicateWindow is how long a MessageID is remembered: a message with
	// an ID seen within the window is dropped. Default 10m. Negative turns
	// duplicate detection off.
	DuplicateWindow time.Duration
	// MaxMessageBytes is the largest message body accepted. Default 4 MiB.
	MaxMessageBytes int
	// BusyTimeout is how long a write waits for another process holding the
	// database's write lock. Default 5s.
	BusyTimeout time.Duration
	// Prefetch is how many messages a receive claims at once: those beyond
	// what its caller asked for are kept, locked, for the next receives.
	// Default DefaultPrefetch; 1 turns prefetching off.
	Prefetch int
	// UnreadyAfter is how long the background work (checkpoints, the
	// duplicate window's pruning) may keep failing before Ready reports the
	// queue unready: the log then grows without bound. Default 30s.
	UnreadyAfter time.Duration
	// Metrics, if set, records the queue's own dead-lettering, dropped
	// duplicates and checkpoints.
	Metrics *Metrics
}

// Defaults.
const (
	DefaultLockDuration     = 60 * time.Second
	DefaultMaxDeliveryCount = 10
	DefaultDuplicateWindow  = 10 * time.Minute
	DefaultMaxMessageBytes  = 4 << 20
	DefaultBusyTimeout      = 5 * time.Second
	DefaultPrefetch         = 16
	DefaultUnreadyAfter     = 30 * time.Second
)

func (c *Config) setDefaults() {
	if c.LockDuration == 0 {
		c.LockDuration = DefaultLockDuration
	}
	if c.MaxDeliveryCount == 0 {
		c.MaxDeliveryCount = DefaultMaxDeliveryCount
	}
	if c.DuplicateWindow == 0 {
		c.DuplicateWindow = DefaultDuplicateWindow
	}
	if c.MaxMessageBytes == 0 {
		c.MaxMessageBytes = DefaultMaxMessageBytes
	}
	if c.BusyTimeout == 0 {
		c.BusyTimeout = DefaultBusyTimeout
	}
	if c.Prefetch == 0 {
		c.Prefetch = DefaultPrefetch
	}
	if c.UnreadyAfter == 0 {
		c.UnreadyAfter = DefaultUnreadyAfter
	}
}

// Validate reports the first invalid setting.
func (c Config) Validate() error {
	switch {
	case c.Path == "":
		return fmt.Errorf("sqlite queue: the database path is empty; use sqlite:<path>, e.g. sqlite:hookbridge.db")
	case c.LockDuration < 0 || (c.LockDuration > 0 && c.LockDuration < 100*time.Millisecond) || c.LockDuration > time.Hour:
		return fmt.Errorf("sqlite queue: lock %s: must be between 100ms and 1h", c.LockDuration)
	case c.MaxDeliveryCount < 0 || c.MaxDeliveryCount > 10000:
		return fmt.Errorf("sqlite queue: max_delivery %d: must be between 1 and 10000", c.MaxDeliveryCount)
	case c.DuplicateWindow > 7*24*time.Hour:
		return fmt.Errorf("sqlite queue: dedup_window %s: must be at most 7 days", c.DuplicateWindow)
	case c.MaxMessageBytes < 0 || c.MaxMessageBytes > 256<<20:
		return fmt.Errorf("sqlite queue: max_message_bytes %d: must be between 1 and %d", c.MaxMessageBytes, 256<<20)
	case c.BusyTimeout < 0:
		return fmt.Errorf("sqlite queue: busy_timeout %s: must not be negative", c.BusyTimeout)
	case c.UnreadyAfter < 0:
		return fmt.Errorf("sqlite queue: unready after %s: must not be negative", c.UnreadyAfter)
	case c.Prefetch < 0 || c.Prefetch > 1024:
		return fmt.Errorf("sqlite queue: prefetch %d: must be between 1 and 1024", c.Prefetch)
	}
	return nil
}

// ParseURL reads a queue URL of the form sqlite:<path>[?option=value&...].
// Options: lock (duration), max_delivery (count), dedup_window (duration, 0
// or "off" to disable), max_message_bytes, busy_timeout (duration),
// prefetch (count).
func ParseURL(raw string) (Config, error) {
	rest, ok := strings.CutPrefix(raw, "sqlite:")
	if !ok {
		return Config{}, fmt.Errorf("queue URL %q: not a sqlite: URL", raw)
	}
	rest = strings.TrimPrefix(rest, "//")
	path, query, _ := strings.Cut(rest, "?")
	cfg := Config{Path: path}
	q, err := url.ParseQuery(query)
	if err != nil {
		return Config{}, fmt.Errorf("queue URL %q: options: %w", raw, err)
	}
	for name, values := range q {
		v := values[len(values)-1]
		var err error
		switch name {
		case "lock":
			cfg.LockDuration, err = time.ParseDuration(v)
		case "max_delivery":
			cfg.MaxDeliveryCount, err = strconv.Atoi(v)
			if err == nil && cfg.MaxDeliveryCount == 0 {
				err = fmt.Errorf("must be at least 1")
			}
		case "dedup_window":
			if v == "off" || v == "0" {
				cfg.DuplicateWindow = -1
				break
			}
			cfg.DuplicateWindow, err = time.ParseDuration(v)
		case "max_message_bytes":
			cfg.MaxMessageBytes, err = strconv.Atoi(v)
		case "busy_timeout":
			cfg.BusyTimeout, err = time.ParseDuration(v)
		case "prefetch":
			cfg.Prefetch, err = strconv.Atoi(v)
			if err == nil && cfg.Prefetch == 0 {
				err = fmt.Errorf("must be at least 1")
			}
		default:
			return Config{}, fmt.Errorf("queue URL %q: unknown option %q; known: lock, max_delivery, dedup_window, max_message_bytes, busy_timeout, prefetch", raw, name)
		}
		if err == nil && (name == "lock" && cfg.LockDuration == 0 || name == "max_message_bytes" && cfg.MaxMessageBytes == 0 ||
			name == "busy_timeout" && cfg.BusyTimeout == 0) {
			// Zero means the default in Config; written in a URL it is a
			// mistake, not a request for the default.
			err = errors.New("must be more than zero (leave the option out for the default)")
		}
		if err != nil {
			return Config{}, fmt.Errorf("queue URL %q: option %s=%q: %w", raw, name, v, err)
		}
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}
