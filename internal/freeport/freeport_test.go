package freeport_test

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/hookbridge/hookbridge/internal/freeport"
)

// TestAddr: the address is on loopback, nobody listens on it, and it can
// be bound.
func TestAddr(t *testing.T) {
	t.Parallel()
	addr := freeport.Addr(t)
	if !strings.HasPrefix(addr, "127.0.0.1:") || strings.HasSuffix(addr, ":0") {
		t.Fatalf("address %q, want 127.0.0.1 and a port", addr)
	}
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Fatalf("something listens on %s", addr)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("bind %s: %v", addr, err)
	}
	l.Close()
}

// TestAddrAvoidsEphemeralPorts: on Linux the ports are taken from below the
// kernel's ephemeral range, where no outgoing connection can take them
// first, and one process never gets the same port twice.
func TestAddrAvoidsEphemeralPorts(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		t.Skipf("no ephemeral port range to avoid here: %v", err)
	}
	var low int
	if _, err := fmt.Sscan(string(b), &low); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for range 200 {
		addr := freeport.Addr(t)
		_, p, _ := net.SplitHostPort(addr)
		port, _ := strconv.Atoi(p)
		if low > 11000 && port >= low {
			t.Fatalf("port %d is in the ephemeral range from %d", port, low)
		}
		if seen[addr] {
			t.Fatalf("%s handed out twice", addr)
		}
		seen[addr] = true
	}
}
