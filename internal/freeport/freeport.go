// Package freeport finds a loopback address for a test: a port that nobody
// listens on at the moment, for a child process to bind, or for a client to
// find refused.
package freeport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"testing"
)

// lowest is the lowest port Addr hands out: below it are the well-known and
// commonly configured ports.
const lowest = 10000

var (
	mu     sync.Mutex
	handed = map[int]bool{} // ports this process handed out
)

// Addr returns 127.0.0.1:<port> for a port that was free when Addr
// returned. Another process may take it before the caller binds it; tests
// that can pass a listener (net.Listen on port 0) should.
//
// Where the system's ephemeral range is known (Linux), the port is chosen
// below it: the kernel gives the source ports of outgoing connections and
// the ports of listeners on port 0 from that range only, so no connection
// made by a test running in parallel can take the port before the child
// process binds it. Addr never hands the same port out twice in one process.
func Addr(t testing.TB) string {
	t.Helper()
	if low, ok := ephemeralLow(); ok && low > lowest+1000 {
		for range 100 {
			if addr, ok := try(lowest + rand.IntN(low-lowest)); ok {
				return addr
			}
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("freeport: %v", err)
	}
	defer l.Close()
	return l.Addr().String()
}

// try returns the address of port if it was not handed out before and can
// be bound now.
func try(port int) (string, bool) {
	mu.Lock()
	defer mu.Unlock()
	if handed[port] {
		return "", false
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return "", false
	}
	l.Close()
	handed[port] = true
	return addr, true
}

// ephemeralLow is the lowest port of the kernel's ephemeral range.
func ephemeralLow() (int, bool) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0, false
	}
	var low, high int
	if _, err := fmt.Sscan(string(b), &low, &high); err != nil || low <= 0 || low > high {
		return 0, false
	}
	return low, true
}
