package console

import (
	"net/http/httptest"
	"strings"
	"testing"
)

func TestClientOf(t *testing.T) {
	trusted, err := ParseTrustedProxies([]string{"10.0.0.0/8", "2001:db8::1"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		peer    string
		xff     []string
		trusted bool
		want    client
	}{
		{"no trusted proxies: the peer, header ignored", "10.0.0.5:4000", []string{"192.0.2.1"}, false, client{addr: "10.0.0.5"}},
		{"untrusted peer: a header it sent is ignored", "203.0.113.9:4000", []string{"192.0.2.1"}, true, client{addr: "203.0.113.9"}},
		{"trusted proxy: the address it appended", "10.0.0.5:4000", []string{"192.0.2.1"}, true, client{addr: "192.0.2.1", via: "10.0.0.5"}},
		{"what the client put first is not read", "10.0.0.5:4000", []string{"198.51.100.99, 192.0.2.1"}, true, client{addr: "192.0.2.1", via: "10.0.0.5"}},
		{"a chain of trusted proxies", "10.0.0.5:4000", []string{"198.51.100.99, 192.0.2.1, 10.1.1.1", "10.2.2.2"}, true, client{addr: "192.0.2.1", via: "10.0.0.5"}},
		{"with ports and IPv6", "[2001:db8::1]:443", []string{"[2001:db8::42]:5555"}, true, client{addr: "2001:db8::42", via: "2001:db8::1"}},
		{"IPv4-mapped peer", "[::ffff:10.0.0.5]:4000", []string{"192.0.2.1"}, true, client{addr: "192.0.2.1", via: "::ffff:10.0.0.5"}},
		{"only trusted hops: the farthest", "10.0.0.5:4000", []string{"10.9.9.9, 10.1.1.1"}, true, client{addr: "10.9.9.9", via: "10.0.0.5"}},
		{"the proxy's own request", "10.0.0.5:4000", nil, true, client{addr: "10.0.0.5"}},
		{"a hop that is not an address ends the walk", "10.0.0.5:4000", []string{"192.0.2.1, unknown"}, true, client{addr: "unknown", via: "10.0.0.5"}},
	}
	for _, tt := range tests {
		r := httptest.NewRequest("GET", "/", nil)
		r.RemoteAddr = tt.peer
		for _, v := range tt.xff {
			r.Header.Add("X-Forwarded-For", v)
		}
		var tp = trusted
		if !tt.trusted {
			tp = nil
		}
		if got := clientOf(r, tp); got != tt.want {
			t.Errorf("%s: %+v, want %+v", tt.name, got, tt.want)
		}
	}
}

func TestParseTrustedProxies(t *testing.T) {
	got, err := ParseTrustedProxies([]string{"10.0.0.5", " 10.1.2.3/16 ", "::1"})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[0].String() != "10.0.0.5/32" || got[1].String() != "10.1.0.0/16" || got[2].String() != "::1/128" {
		t.Errorf("parsed %v", got)
	}
	for _, bad := range []string{"", "proxy.internal", "10.0.0.0/33"} {
		if _, err := ParseTrustedProxies([]string{bad}); err == nil || !strings.Contains(err.Error(), "CIDR") {
			t.Errorf("%q: %v, want an error naming what to give", bad, err)
		}
	}
}
