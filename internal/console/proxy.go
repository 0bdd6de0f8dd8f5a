package console

import (
	"fmt"
	"net/http"
	"net/netip"
	"strings"
)

// ParseTrustedProxies reads the addresses of reverse proxies in front of
// the console: each an IP address or a CIDR range. IPv4-mapped IPv6 forms
// are read as the IPv4 they map, as peers are.
func ParseTrustedProxies(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range list {
		s = strings.TrimSpace(s)
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil || a.Zone() != "" {
				return nil, fmt.Errorf("trusted proxy %q is neither an IP address nor a CIDR range: give the proxy's address (10.0.0.5) or its network (10.0.0.0/24)", s)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
		}
		out = append(out, p.Masked())
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

// maxForwardedHops bounds how far X-Forwarded-For is read from its right
// end: past that many trusted proxies, the last one read is taken as the
// client.
const maxForwardedHops = 16

// clientOf finds r's client. X-Forwarded-For is read from its right end,
// where the proxy nearest the console appended, past every trusted proxy:
// the first address that is not one is the client. What a client put in
// the header itself is left of that and never read, so a client cannot
// choose the address it is limited and logged under (a host inside a
// trusted range is trusted to, like a proxy).
func clientOf(r *http.Request, trusted []netip.Prefix) client {
	peer, ok := parseHost(r.RemoteAddr)
	if !ok {
		return client{addr: r.RemoteAddr}
	}
	if len(trusted) == 0 || !isTrusted(peer, trusted) {
		return client{addr: peer.String()}
	}
	lines := r.Header.Values("X-Forwarded-For")
	var last netip.Addr // the last hop read, when an address
	hops := 0
	for i := len(lines) - 1; i >= 0; i-- {
		line := lines[i]
		for line != "" && hops < maxForwardedHops {
			hop := line
			if j := strings.LastIndexByte(line, ','); j >= 0 {
				hop, line = line[j+1:], line[:j]
			} else {
				line = ""
			}
			hop = strings.TrimSpace(hop)
			if hop == "" {
				continue
			}
			hops++
			a, ok := parseHost(hop)
			if !ok { // not an address, written by a trusted proxy: it names the client
				return client{addr: hop, via: peer.String()}
			}
			if last = a; !isTrusted(a, trusted) {
				return client{addr: a.String(), via: peer.String()}
			}
		}
	}
	if !last.IsValid() { // no header: the proxy's own request
		return client{addr: peer.String()}
	}
	return client{addr: last.String(), via: peer.String()} // every hop read was trusted
}

// parseHost reads an address with or without a port and IPv6 brackets
// ("192.0.2.1", "192.0.2.1:80", "[2001:db8::1]:80", "2001:db8::1"), written
// one way: IPv4-mapped as IPv4, without a zone. So one client is one
// limiter key and one name in the logs.
func parseHost(s string) (netip.Addr, bool) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		ap, perr := netip.ParseAddrPort(s)
		if perr != nil {
			if a, err = netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")); err != nil {
				return netip.Addr{}, false
			}
		} else {
			a = ap.Addr()
		}
	}
	return a.Unmap().WithZone(""), true
}

func isTrusted(a netip.Addr, trusted []netip.Prefix) bool {
	for _, p := range trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
