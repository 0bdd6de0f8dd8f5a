package relay

import "math"

// ReplayCount is how many times a message was replayed from the dead-letter
// queue: its PropReplayCount property, read whatever integer or float type
// the backend decoded it as; 0 when absent or not a number.
func ReplayCount(props map[string]any) int64 {
	switch v := props[PropReplayCount].(type) {
	case int64:
		return v
	case int32:
		return int64(v)
	case int:
		return int64(v)
	case uint32:
		return int64(v)
	case uint64:
		if v > math.MaxInt64 {
			return math.MaxInt64
		}
		return int64(v)
	case float64:
		if v != v || v < 0 { // NaN or negative: not a count
			return 0
		}
		return int64(min(v, math.MaxInt64))
	}
	return 0
}
