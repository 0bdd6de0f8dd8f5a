package sqlite_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/hookbridge/hookbridge/internal/sqlitetest"
	"github.com/hookbridge/hookbridge/relay"
	"github.com/hookbridge/hookbridge/relay/relaytest"
	"github.com/hookbridge/hookbridge/relay/sqlite"
)

func TestConformance(t *testing.T) {
	t.Parallel()
	relaytest.Run(t, func(t *testing.T, want relaytest.Settings) (relaytest.Queue, relaytest.Settings) {
		q := sqlitetest.Open(t, sqlite.Config{
			LockDuration:     want.LockDuration,
			MaxDeliveryCount: want.MaxDeliveryCount,
			DuplicateWindow:  want.DuplicateWindow,
		})
		return q, want
	})
}

func TestParseURL(t *testing.T) {
	t.Parallel()
	good := []struct {
		url  string
		want sqlite.Config
	}{
		{"sqlite:hookbridge.db", sqlite.Config{Path: "hookbridge.db"}},
		{"sqlite:///var/lib/hookbridge/q.db", sqlite.Config{Path: "/var/lib/hookbridge/q.db"}},
		{"sqlite:q.db?max_delivery=5&lock=30s", sqlite.Config{Path: "q.db", MaxDeliveryCount: 5, LockDuration: 30 * time.Second}},
		{"sqlite:q.db?dedup_window=off", sqlite.Config{Path: "q.db", DuplicateWindow: -1}},
		{"sqlite:q.db?dedup_window=1h&busy_timeout=2s&max_message_bytes=1024", sqlite.Config{Path: "q.db", DuplicateWindow: time.Hour, BusyTimeout: 2 * time.Second, MaxMessageBytes: 1024}},
	}
	for _, tt := range good {
		got, err := sqlite.ParseURL(tt.url)
		if err != nil {
			t.Errorf("ParseURL(%q): %v", tt.url, err)
			continue
		}
		if got != tt.want {
			t.Errorf("ParseURL(%q) = %+v, want %+v", tt.url, got, tt.want)
		}
	}
	bad := []string{
		"postgres://x",
		"sqlite:",
		"sqlite:q.db?lock=forever",
		"sqlite:q.db?lock=1ms",
		"sqlite:q.db?lock=0",
		"sqlite:q.db?lock=0s",
		"sqlite:q.db?max_message_bytes=0",
		"sqlite:q.db?busy_timeout=0ms",
		"sqlite:q.db?prefetch=0",
		"sqlite:q.db?max_delivery=0",
		"sqlite:q.db?max_delivery=-1",
		"sqlite:q.db?dedup_window=30d",
		"sqlite:q.db?colour=blue",
		"sqlite:q.db?%zz",
	}
	for _, u := range bad {
		if _, err := sqlite.ParseURL(u); err == nil {
			t.Errorf("ParseURL(%q) accepted", u)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	valid := sqlite.Config{Path: "q.db", LockDuration: time.Minute, MaxDeliveryCount: 10, DuplicateWindow: time.Minute, MaxMessageBytes: 1024, BusyTimeout: time.Second}
	if err := valid.Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	tests := []struct {
		name   string
		change func(*sqlite.Config)
	}{
		{"no path", func(c *sqlite.Config) { c.Path = "" }},
		{"negative lock", func(c *sqlite.Config) { c.LockDuration = -time.Second }},
		{"tiny lock", func(c *sqlite.Config) { c.LockDuration = time.Millisecond }},
		{"huge lock", func(c *sqlite.Config) { c.LockDuration = 2 * time.Hour }},
		{"negative max delivery", func(c *sqlite.Config) { c.MaxDeliveryCount = -1 }},
		{"huge dedup window", func(c *sqlite.Config) { c.DuplicateWindow = 8 * 24 * time.Hour }},
		{"negative max bytes", func(c *sqlite.Config) { c.MaxMessageBytes = -1 }},
		{"negative busy timeout", func(c *sqlite.Config) { c.BusyTimeout = -1 }},
	}
	for _, tt := range tests {
		c := valid
		tt.change(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: accepted", tt.name)
		}
	}
}

// TestSharedFileWakesOtherInstance opens the same file twice, as an ingress
// process and a worker process do, and checks that a receiver on one is
// woken promptly by a send on the other (the notification file), not by the
// one-second safety poll.
func TestSharedFileWakesOtherInstance(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "shared.db")
	sender := sqlitetest.Open(t, sqlite.Config{Path: path})
	receiver := sqlitetest.Open(t, sqlite.Config{Path: path})
	for i := range 5 {
		got := make(chan time.Duration, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			msgs, err := receiver.Receive(ctx, 1)
			if err != nil {
				got <- -1
				return
			}
			got <- time.Since(msgs[0].EnqueuedTime)
			receiver.Complete(context.Background(), msgs[0])
		}()
		time.Sleep(100 * time.Millisecond) // the receiver is waiting
		if err := sender.SendBatch(context.Background(), []relay.Message{relaytest.Msg(fmt.Sprintf("x-%d", i), "")}); err != nil {
			t.Fatal(err)
		}
		d := <-got
		if d < 0 {
			t.Fatal("receiver got nothing")
		}
		if d > 250*time.Millisecond {
			t.Errorf("round %d: woken %v after the send on the other instance", i, d)
		}
	}
}
