package relay

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestTruncate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		s    string
		n    int
		want string
	}{
		{"short", 10, "short"},
		{"exactly10!", 10, "exactly10!"},
		{"0123456789abc", 10, "0123456…"},
		{"ééééé", 6, "é…"}, // 2-byte runes: a cut inside one backs off to its start
		{"日本語のテキスト", 8, "日…"},
		{"abcdef", 2, "ab"},
		{"éé", 1, ""},
	}
	for _, tt := range tests {
		got := Truncate(tt.s, tt.n)
		if got != tt.want {
			t.Errorf("Truncate(%q, %d) = %q, want %q", tt.s, tt.n, got, tt.want)
		}
		if len(got) > tt.n || !utf8.ValidString(got) {
			t.Errorf("Truncate(%q, %d) = %q: %d bytes, valid UTF-8 %v", tt.s, tt.n, got, len(got), utf8.ValidString(got))
		}
	}
	long := strings.Repeat("€", 2000)
	if got := Truncate(long, 1024); len(got) > 1024 || !utf8.ValidString(got) || !strings.HasSuffix(got, "…") {
		t.Errorf("Truncate of 2000 euro signs to 1024 bytes: %d bytes", len(got))
	}
}
