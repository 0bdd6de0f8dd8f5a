package sbemu

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"time"
)

// emulatorConfig is the Config.json of Microsoft's Service Bus emulator; the
// parts this emulator reads.
type emulatorConfig struct {
	UserConfig struct {
		Namespaces []struct {
			Name   string `json:"Name"`
			Queues []struct {
				Name       string `json:"Name"`
				Properties struct {
					DeadLetteringOnMessageExpiration bool   `json:"DeadLetteringOnMessageExpiration"`
					DefaultMessageTimeToLive         string `json:"DefaultMessageTimeToLive"`
					DuplicateDetectionHistoryWindow  string `json:"DuplicateDetectionHistoryTimeWindow"`
					LockDuration                     string `json:"LockDuration"`
					MaxDeliveryCount                 int    `json:"MaxDeliveryCount"`
					RequiresDuplicateDetection       bool   `json:"RequiresDuplicateDetection"`
					RequiresSession                  bool   `json:"RequiresSession"`
				} `json:"Properties"`
			} `json:"Queues"`
			Topics []json.RawMessage `json:"Topics"`
		} `json:"Namespaces"`
	} `json:"UserConfig"`
}

// LoadConfigFile reads a Config.json in the format of Microsoft's Service
// Bus emulator and returns its namespace name and queues.
func LoadConfigFile(path string) (string, []QueueConfig, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", nil, fmt.Errorf("read emulator config: %w", err)
	}
	return ParseConfig(b)
}

// ParseConfig parses a Config.json document.
func ParseConfig(b []byte) (string, []QueueConfig, error) {
	var c emulatorConfig
	if err := json.Unmarshal(b, &c); err != nil {
		return "", nil, fmt.Errorf("parse emulator config: %w", err)
	}
	if len(c.UserConfig.Namespaces) != 1 {
		return "", nil, fmt.Errorf("emulator config: need exactly one namespace in UserConfig.Namespaces, found %d", len(c.UserConfig.Namespaces))
	}
	ns := c.UserConfig.Namespaces[0]
	var queues []QueueConfig
	seen := map[string]bool{}
	for _, q := range ns.Queues {
		if q.Name == "" {
			return "", nil, fmt.Errorf("emulator config: a queue has no Name")
		}
		if seen[q.Name] {
			return "", nil, fmt.Errorf("emulator config: queue %q appears twice", q.Name)
		}
		seen[q.Name] = true
		p := q.Properties
		qc := QueueConfig{
			Name:                             q.Name,
			MaxDeliveryCount:                 p.MaxDeliveryCount,
			RequiresSession:                  p.RequiresSession,
			RequiresDuplicateDetection:       p.RequiresDuplicateDetection,
			DeadLetteringOnMessageExpiration: p.DeadLetteringOnMessageExpiration,
		}
		for _, d := range []struct {
			field string
			raw   string
			dst   *time.Duration
		}{
			{"LockDuration", p.LockDuration, &qc.LockDuration},
			{"DuplicateDetectionHistoryTimeWindow", p.DuplicateDetectionHistoryWindow, &qc.DuplicateDetectionHistoryTimeWindow},
			{"DefaultMessageTimeToLive", p.DefaultMessageTimeToLive, &qc.DefaultMessageTimeToLive},
		} {
			if d.raw == "" {
				continue
			}
			v, err := ParseISODuration(d.raw)
			if err != nil {
				return "", nil, fmt.Errorf("emulator config: queue %q: %s: %w", q.Name, d.field, err)
			}
			*d.dst = v
		}
		if qc.MaxDeliveryCount < 0 {
			return "", nil, fmt.Errorf("emulator config: queue %q: MaxDeliveryCount must be positive", q.Name)
		}
		queues = append(queues, qc)
	}
	return ns.Name, queues, nil
}

var isoDuration = regexp.MustCompile(`^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$`)

// ParseISODuration parses an ISO 8601 duration of days, hours, minutes and
// seconds, such as PT1M, PT20S, P1D or P1DT2H30M.
func ParseISODuration(s string) (time.Duration, error) {
	m := isoDuration.FindStringSubmatch(s)
	if m == nil || s == "P" || s == "PT" {
		return 0, fmt.Errorf("%q is not an ISO 8601 duration like PT1M or P1D", s)
	}
	var d time.Duration
	for i, unit := range []time.Duration{24 * time.Hour, time.Hour, time.Minute} {
		if m[i+1] != "" {
			n, _ := strconv.Atoi(m[i+1])
			d += time.Duration(n) * unit
		}
	}
	if m[4] != "" {
		f, _ := strconv.ParseFloat(m[4], 64)
		d += time.Duration(f * float64(time.Second))
	}
	return d, nil
}

// QueueConfig describes one queue, with Service Bus's property names and
// defaults.
type QueueConfig struct {
	Name string
	// LockDuration: default 60s.
	LockDuration time.Duration
	// MaxDeliveryCount: default 10.
	MaxDeliveryCount int
	// RequiresSession: the queue delivers only through session receivers,
	// and refuses messages without a session ID.
	RequiresSession bool
	// RequiresDuplicateDetection and DuplicateDetectionHistoryTimeWindow
	// (default 10m): a message whose ID was sent within the window is
	// accepted and dropped.
	RequiresDuplicateDetection          bool
	DuplicateDetectionHistoryTimeWindow time.Duration
	// DefaultMessageTimeToLive: zero means messages do not expire.
	DefaultMessageTimeToLive time.Duration
	// DeadLetteringOnMessageExpiration moves expired messages to the
	// dead-letter queue (reason TTLExpiredException) instead of dropping
	// them.
	DeadLetteringOnMessageExpiration bool
	// MaxMessageSizeBytes: default 256 KiB, as on the Standard tier.
	MaxMessageSizeBytes int
}

func (c *QueueConfig) setDefaults() {
	if c.LockDuration == 0 {
		c.LockDuration = time.Minute
	}
	if c.MaxDeliveryCount == 0 {
		c.MaxDeliveryCount = 10
	}
	if c.DuplicateDetectionHistoryTimeWindow == 0 {
		c.DuplicateDetectionHistoryTimeWindow = 10 * time.Minute
	}
	if c.MaxMessageSizeBytes == 0 {
		c.MaxMessageSizeBytes = 256 << 10
	}
}
