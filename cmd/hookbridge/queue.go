package main

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/hookbridge/hookbridge/consumer"
	"github.com/hookbridge/hookbridge/relay"
	"github.com/hookbridge/hookbridge/relay/sqlite"
)

// DefaultQueue is the --queue default: the embedded queue in the working
// directory.
const DefaultQueue = "sqlite:hookbridge.db"

// queue is what the commands need of a queue backend.
type queue interface {
	relay.BatchSender
	consumer.Source
	Ping(ctx context.Context) error
	Close() error
	// commitsInFlight is how many group commits may run at once.
	commitsInFlight() int
}

// sqliteQueue is the embedded queue as the commands use it.
type sqliteQueue struct{ *sqlite.Queue }

// commitsInFlight: one commit writes while the previous one's fsync
// completes (see relay/sqlite's walSyncer).
func (sqliteQueue) commitsInFlight() int { return 2 }

// openQueue opens the queue named by a --queue URL.
func openQueue(ctx context.Context, raw string, getenv env, log *slog.Logger) (queue, error) {
	switch {
	case strings.HasPrefix(raw, "sqlite:"):
		cfg, err := sqlite.ParseURL(raw)
		if err != nil {
			return nil, usageError{fmt.Errorf("--queue: %w", err)}
		}
		q, err := sqlite.Open(ctx, cfg, log)
		if err != nil {
			return nil, fmt.Errorf("open queue: %w", err)
		}
		return sqliteQueue{q}, nil
	default:
		return nil, usageError{fmt.Errorf("--queue %q: unknown queue URL; use sqlite:<path> (e.g. %s)", raw, DefaultQueue)}
	}
}
