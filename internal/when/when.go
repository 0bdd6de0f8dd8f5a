// Package when reads a point in time as hookbridge's dead-letter filters
// take it, in `hookbridge dlq --since/--until` and in the console's filter
// form: an RFC 3339 time, or a duration ago.
package when

import (
	"fmt"
	"time"
)

// Parse reads s as an RFC 3339 time (2024-05-14T17:30:00Z) or as a
// non-negative duration before now (2h). An empty s is the zero time: no
// bound. name is how the caller calls the value (a flag, a form field), for
// the error.
func Parse(s string, now time.Time, name string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, fmt.Errorf("%s %q: use an RFC 3339 time (2024-05-14T17:30:00Z) or a duration ago (2h)", name, s)
}
