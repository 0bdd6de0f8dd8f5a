package relay

import (
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	t.Parallel()
	tests := []struct {
		attempt     int
		base, limit time.Duration
		max         time.Duration
	}{
		{1, time.Second, time.Minute, time.Second},
		{2, time.Second, time.Minute, 2 * time.Second},
		{4, time.Second, time.Minute, 8 * time.Second},
		{30, time.Second, time.Minute, time.Minute},
		{1000, time.Second, 2 * time.Minute, 2 * time.Minute},
		{0, time.Second, time.Minute, time.Second},
		{1, time.Hour, time.Minute, time.Minute},
		{3, 0, time.Minute, 0},
	}
	for _, tt := range tests {
		for range 50 {
			got := Backoff(tt.attempt, tt.base, tt.limit)
			if got > tt.max || got < tt.max/2 {
				t.Fatalf("Backoff(%d, %v, %v) = %v, want within [%v, %v]", tt.attempt, tt.base, tt.limit, got, tt.max/2, tt.max)
			}
		}
	}
}
