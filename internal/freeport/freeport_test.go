package freeport_test

import (
	"net"
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
