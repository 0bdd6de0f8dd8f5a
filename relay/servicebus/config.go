package servicebus

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
)

// Config configures the Service Bus backend.
type Config struct {
	// Namespace is the fully qualified namespace, e.g.
	// contoso.servicebus.windows.net. Required unless ConnectionString is
	// set.
	Namespace string
	// Queue is the queue name. Required.
	Queue string
	// ConnectionString, when set, authenticates instead of Credential
	// (shared access keys, or the emulator's UseDevelopmentEmulator=true).
	ConnectionString string
	// Credential authenticates with Microsoft Entra ID; required when there
	// is no connection string. The command builds azidentity's
	// DefaultAzureCredential (managed identity, workload identity, Azure
	// CLI, environment).
	Credential azcore.TokenCredential
	// Sessions says the queue is session-enabled (RequiresSession): messages
	// carry their partition key as SessionID (a keyless message gets its own
	// ID), and receivers take sessions, so each call's events arrive one at
	// a time, in order. Default true: the recommended queue.
	Sessions *bool
	// MaxSessions is how many sessions a receiver holds at once. Default 8.
	MaxSessions int
	// SessionIdle is how long a receiver keeps an empty session before
	// releasing it for others. Default 1s.
	SessionIdle time.Duration
	// LockDuration is the queue's lock duration, for lock renewal timing
	// when the SDK does not report it. Default 60s.
	LockDuration time.Duration
	// MaxDeliveryCount is the queue's maximum delivery count, which the
	// SDK does not report: received messages carry it, so that a consumer
	// dead-letters a message's last delivery itself, saying why, instead of
	// abandoning it into the queue's own dead-lettering. Keep it equal to
	// the queue's setting. Default 10, Service Bus's default.
	MaxDeliveryCount int
	// UnreadyAfter is how long Run's session accepts may keep failing before
	// Ready reports the queue unready. Default 30s.
	UnreadyAfter time.Duration
	// Retry bounds the SDK's retries of one operation, so that a send fails
	// within the ingress's deadline (503) instead of hanging: at most
	// MaxRetries retries, RetryDelay doubling up to MaxRetryDelay. Defaults
	// 3, 200ms, 2s.
	MaxRetries    int32
	RetryDelay    time.Duration
	MaxRetryDelay time.Duration
}

// DefaultMaxDeliveryCount is Service Bus's default maximum delivery count.
const DefaultMaxDeliveryCount = 10

func (c *Config) sessions() bool { return c.Sessions == nil || *c.Sessions }

func (c *Config) setDefaults() {
	if c.MaxSessions == 0 {
		c.MaxSessions = 8
	}
	if c.SessionIdle == 0 {
		c.SessionIdle = time.Second
	}
	if c.LockDuration == 0 {
		c.LockDuration = time.Minute
	}
	if c.MaxDeliveryCount == 0 {
		c.MaxDeliveryCount = DefaultMaxDeliveryCount
	}
	if c.UnreadyAfter == 0 {
		c.UnreadyAfter = 30 * time.Second
	}
	if c.MaxRetries == 0 {
		c.MaxRetries = 3
	}
	if c.RetryDelay == 0 {
		c.RetryDelay = 200 * time.Millisecond
	}
	if c.MaxRetryDelay == 0 {
		c.MaxRetryDelay = 2 * time.Second
	}
}

// Validate reports the first invalid setting.
func (c Config) Validate() error {
	switch {
	case c.Queue == "" || strings.ContainsAny(c.Queue, "/?#"):
		return fmt.Errorf("servicebus: queue name %q: give one queue, e.g. servicebus://contoso.servicebus.windows.net/events", c.Queue)
	case c.Namespace == "" && c.ConnectionString == "":
		return errors.New("servicebus: no namespace in the queue URL and no connection string; use servicebus://<namespace>.servicebus.windows.net/<queue> or set HOOKBRIDGE_SERVICEBUS_CONNECTION_STRING")
	case c.MaxSessions < 0 || c.MaxSessions > 1000:
		return fmt.Errorf("servicebus: max_sessions %d: must be between 1 and 1000", c.MaxSessions)
	case c.MaxDeliveryCount < 0 || c.MaxDeliveryCount > 2000:
		return fmt.Errorf("servicebus: max_delivery %d: must be between 1 and 2000, the queue's MaxDeliveryCount", c.MaxDeliveryCount)
	case c.SessionIdle < 0 || c.LockDuration < 0 || c.RetryDelay < 0 || c.MaxRetryDelay < 0 || c.MaxRetries < 0 || c.UnreadyAfter < 0:
		return errors.New("servicebus: durations and retries must not be negative")
	}
	return nil
}

// ParseURL reads servicebus://<namespace>/<queue>[?options], or
// servicebus:///<queue> when a connection string names the namespace.
// Options: sessions (true/false), max_sessions, session_idle, lock,
// max_delivery.
func ParseURL(raw, connectionString string) (Config, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "servicebus" {
		return Config{}, fmt.Errorf("queue URL %q: not a servicebus:// URL", raw)
	}
	cfg := Config{Namespace: u.Host, Queue: strings.Trim(u.Path, "/"), ConnectionString: connectionString}
	for name, values := range u.Query() {
		v := values[len(values)-1]
		var err error
		switch name {
		case "sessions":
			var b bool
			b, err = strconv.ParseBool(v)
			cfg.Sessions = &b
		case "max_sessions":
			cfg.MaxSessions, err = strconv.Atoi(v)
		case "session_idle":
			cfg.SessionIdle, err = time.ParseDuration(v)
		case "lock":
			cfg.LockDuration, err = time.ParseDuration(v)
		case "max_delivery":
			cfg.MaxDeliveryCount, err = strconv.Atoi(v)
			if err == nil && cfg.MaxDeliveryCount <= 0 {
				err = errors.New("must be positive: the queue's MaxDeliveryCount")
			}
		default:
			return Config{}, fmt.Errorf("queue URL %q: unknown option %q; known: sessions, max_sessions, session_idle, lock, max_delivery", raw, name)
		}
		if err == nil && (name == "lock" && cfg.LockDuration == 0 || name == "max_sessions" && cfg.MaxSessions == 0 ||
			name == "session_idle" && cfg.SessionIdle == 0) {
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
