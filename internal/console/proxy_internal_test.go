package console

import (
	"fmt"
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
		{"IPv4-mapped peer and client, written as IPv4", "[::ffff:10.0.0.5]:4000", []string{"::ffff:192.0.2.1"}, true, client{addr: "192.0.2.1", via: "10.0.0.5"}},
		{"past the hop bound: the last hop read", "10.0.0.5:4000", []string{"192.0.2.1," + strings.Repeat("10.0.0.9,", 20) + "10.0.0.9"}, true, client{addr: "10.0.0.9", via: "10.0.0.5"}},
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
	got, err := ParseTrustedProxies([]string{"10.0.0.5", " 10.1.2.3/16 ", "::1", "::ffff:10.2.0.0/112", "::ffff:10.3.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"10.0.0.5/32", "10.1.0.0/16", "::1/128", "10.2.0.0/16", "10.3.0.1/32"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("parsed %v, want %v", got, want)
	}
	for _, bad := range []string{"", "proxy.internal", "10.0.0.0/33", "fe80::1%eth0"} {
		if _, err := ParseTrustedProxies([]string{bad}); err == nil || !strings.Contains(err.Error(), "CIDR") {
			t.Errorf("%q: %v, want an error naming what to give", bad, err)
		}
	}
}

// TestClientOfHostileHeader: a header of many hops costs the same small
// walk as a short one.
func TestClientOfHostileHeader(t *testing.T) {
	trusted, _ := ParseTrustedProxies([]string{"10.0.0.0/8"})
	r := httptest.NewRequest("GET", "/", nil)
	r.RemoteAddr = "10.0.0.5:4000"
	r.Header.Set("X-Forwarded-For", strings.Repeat(",", 64<<10)+strings.Repeat("10.1.1.1,", 1000))
	if got := clientOf(r, trusted); got.addr != "10.1.1.1" {
		t.Errorf("client %+v", got)
	}
	if n := testing.AllocsPerRun(20, func() { clientOf(r, trusted) }); n > 8 {
		t.Errorf("%v allocations a request, want a few", n)
	}
}
