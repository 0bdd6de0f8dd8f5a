package relay

import "unicode/utf8"

// Truncate returns s if it is at most n bytes long, and otherwise its
// longest prefix that fits in n bytes together with a trailing "…",
// never cutting a UTF-8 character in two. Dead-letter descriptions and
// log fields built from untrusted text (a backend's answer) go through it.
func Truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	const ellipsis = "…"
	cut := n - len(ellipsis)
	if cut <= 0 {
		cut = n
	}
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	if cut+len(ellipsis) > n {
		return s[:cut]
	}
	return s[:cut] + ellipsis
}
