package when_test

import (
	"testing"
	"time"

	"github.com/hookbridge/hookbridge/internal/when"
)

func TestParse(t *testing.T) {
	t.Parallel()
	now := time.Date(2024, 5, 14, 18, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		in      string
		want    time.Time
		wantErr string
	}{
		{"", time.Time{}, ""},
		{"2024-05-14T17:30:00Z", time.Date(2024, 5, 14, 17, 30, 0, 0, time.UTC), ""},
		{"2024-05-14T19:30:00+02:00", time.Date(2024, 5, 14, 17, 30, 0, 0, time.UTC), ""},
		{"2h", now.Add(-2 * time.Hour), ""},
		{"0s", now, ""},
		{"-2h", time.Time{}, `--since "-2h": use an RFC 3339 time (2024-05-14T17:30:00Z) or a duration ago (2h)`},
		{"yesterday", time.Time{}, `--since "yesterday": use an RFC 3339 time (2024-05-14T17:30:00Z) or a duration ago (2h)`},
		{"2024-05-14", time.Time{}, `--since "2024-05-14": use an RFC 3339 time (2024-05-14T17:30:00Z) or a duration ago (2h)`},
	} {
		got, err := when.Parse(tt.in, now, "--since")
		gotErr := ""
		if err != nil {
			gotErr = err.Error()
		}
		if !got.Equal(tt.want) || gotErr != tt.wantErr {
			t.Errorf("Parse(%q) = %v, %q; want %v, %q", tt.in, got, gotErr, tt.want, tt.wantErr)
		}
	}
}
