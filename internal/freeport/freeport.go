// Package freeport finds a loopback address for a test: a port that nobody
// listens on at the moment, for a child process to bind, or for a client to
// find refused.
package freeport

import (
	"net"
	"testing"
)

// Addr returns 127.0.0.1:<port> for a port that was free when Addr
// returned. Another process may take it before the caller binds it; tests
// that can pass a listener (net.Listen on port 0) should.
func Addr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("freeport: %v", err)
	}
	defer l.Close()
	return l.Addr().String()
}
