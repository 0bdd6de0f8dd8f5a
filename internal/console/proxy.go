package console

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// ParseTrustedProxies reads the addresses of reverse proxies in front of
// the console: each an IP address or a CIDR range.
func ParseTrustedProxies(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range list {
		s = strings.TrimSpace(s)
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("trusted proxy %q is neither an IP address nor a CIDR range: give the proxy's address (10.0.0.5) or its network (10.0.0.0/24)", s)
		}
		a = a.Unmap()
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

// client is who sent a request: the address its TCP peer has or, when
// that peer is a trusted reverse proxy, the address the proxies recorded
// in X-Forwarded-For; via is the peer in that case.
type client struct {
	addr string
	via  string
}

// clientOf finds r's client. X-Forwarded-For is read from its right end,
// where the proxy nearest the console appended, past every trusted proxy:
// the first address that is not one is the client. What a client put in
// the header itself is left of that and never read, so a client cannot
// choose the address it is limited and logged under.
func clientOf(r *http.Request, trusted []netip.Prefix) client {
	peer := hostOf(r.RemoteAddr)
	if len(trusted) == 0 || !isTrusted(peer, trusted) {
		return client{addr: peer}
	}
	var hops []string
	for _, h := range r.Header.Values("X-Forwarded-For") {
		hops = append(hops, strings.Split(h, ",")...)
	}
	addr := ""
	for i := len(hops) - 1; i >= 0; i-- {
		hop := strings.TrimSpace(hops[i])
		if hop == "" {
			continue
		}
		addr = hostOf(hop)
		if !isTrusted(addr, trusted) {
			break
		}
	}
	if addr == "" { // no header: the proxy's own request
		return client{addr: peer}
	}
	return client{addr: addr, via: peer}
}

// hostOf strips a port and IPv6 brackets: "192.0.2.1:80", "[2001:db8::1]:80"
// and "2001:db8::1" all give the address alone.
func hostOf(s string) string {
	if h, _, err := net.SplitHostPort(s); err == nil {
		return h
	}
	return strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")
}

func isTrusted(host string, trusted []netip.Prefix) bool {
	a, err := netip.ParseAddr(host)
	if err != nil {
		return false
	}
	a = a.Unmap()
	for _, p := range trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
