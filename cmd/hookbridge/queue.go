package main

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"

	"github.com/hookbridge/hookbridge/consumer"
	"github.com/hookbridge/hookbridge/relay"
	"github.com/hookbridge/hookbridge/relay/servicebus"
	"github.com/hookbridge/hookbridge/relay/sqlite"
)

// DefaultQueue is the --queue default: the embedded queue in the working
// directory.
const DefaultQueue = "sqlite:hookbridge.db"

// queueHelp describes --queue in every command's help.
const queueHelp = "queue URL: sqlite:<path>[?options], or servicebus://<namespace>.servicebus.windows.net/<queue>[?options] (servicebus:///<queue> with $" + envServiceBusConnStr + ")"

// queue is what the commands need of a queue backend.
type queue interface {
	relay.BatchSender
	consumer.Source
	consumer.DeadLetterQueue
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

// serviceBusQueue is Service Bus as the commands use it.
type serviceBusQueue struct{ *servicebus.Queue }

// commitsInFlight: Service Bus takes concurrent sends on one link.
func (serviceBusQueue) commitsInFlight() int { return 4 }

// openQueue opens the queue named by a --queue URL. sessions, when
// positive, is how many Service Bus sessions a receiver may hold (the
// worker's concurrency) unless the URL sets max_sessions.
func openQueue(ctx context.Context, raw string, getenv env, log *slog.Logger, sessions int) (queue, error) {
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
	case strings.HasPrefix(raw, "servicebus:"):
		cs, err := secret(getenv, envServiceBusConnStr)
		if err != nil {
			return nil, err
		}
		cfg, err := servicebus.ParseURL(raw, cs)
		if err != nil {
			return nil, usageError{fmt.Errorf("--queue: %w", err)}
		}
		if cfg.MaxSessions == 0 && sessions > 0 {
			cfg.MaxSessions = sessions
		}
		if cfg.ConnectionString == "" {
			if cfg.Credential, err = azidentity.NewDefaultAzureCredential(nil); err != nil {
				return nil, fmt.Errorf("open queue: no Azure credential (managed identity, workload identity, Azure CLI or environment), and no $%s: %w", envServiceBusConnStr, err)
			}
		}
		q, err := servicebus.Open(ctx, cfg, log)
		if err != nil {
			return nil, fmt.Errorf("open queue: %w", err)
		}
		return serviceBusQueue{q}, nil
	default:
		return nil, usageError{fmt.Errorf("--queue %q: unknown queue URL; use sqlite:<path> (e.g. %s) or servicebus://<namespace>.servicebus.windows.net/<queue>", raw, DefaultQueue)}
	}
}
