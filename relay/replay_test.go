package relay

import (
	"math"
	"testing"
)

func TestReplayCount(t *testing.T) {
	t.Parallel()
	tests := []struct {
		v    any
		want int64
	}{
		{nil, 0},
		{int64(3), 3},
		{int32(4), 4},
		{5, 5},
		{uint32(6), 6},
		{uint64(7), 7},
		{float64(8), 8},
		{"9", 0},
		{math.NaN(), 0},
		{-1.0, 0},
		{uint64(math.MaxUint64), math.MaxInt64},
	}
	for _, tt := range tests {
		props := map[string]any{}
		if tt.v != nil {
			props[PropReplayCount] = tt.v
		}
		if got := ReplayCount(props); got != tt.want {
			t.Errorf("ReplayCount(%T %v) = %d, want %d", tt.v, tt.v, got, tt.want)
		}
	}
	if ReplayCount(nil) != 0 {
		t.Error("ReplayCount(nil) != 0")
	}
}
