package main

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"

	"github.com/hookbridge/hookbridge/consumer"
	"github.com/hookbridge/hookbridge/ingress"
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
	// maxMessageBytes is the largest message body the queue takes, 0 when
	// not known before a send.
	maxMessageBytes() int
	// background is the backend's background work for a process that
	// receives or not (nil when there is none), and ready whether it can
	// do that process's work now.
	background(receiving bool) func(ctx context.Context) error
	ready(receiving bool) func(ctx context.Context) error
	// traceQueue names the queue in spans, and describes it
	// (messaging.system, messaging.destination.name, server.address).
	traceQueue() (string, []attribute.KeyValue)
}

// sqliteQueue is the embedded queue as the commands use it.
type sqliteQueue struct {
	*sqlite.Queue
	path string
}

// commitsInFlight: one commit writes while the previous one's fsync
// completes (see relay/sqlite's walSyncer).
func (sqliteQueue) commitsInFlight() int { return 2 }

// maxMessageBytes: the file's max_message_bytes.
func (q sqliteQueue) maxMessageBytes() int { return q.MaxMessageBytes() }

// background: every process using the file keeps its write-ahead log
// checked and folded into the database; a receiving one also watches for
// the others' commits.
func (q sqliteQueue) background(bool) func(ctx context.Context) error { return q.Run }

// ready: the queue can take a commit now.
func (q sqliteQueue) ready(bool) func(ctx context.Context) error { return q.Ready }

// serviceBusQueue is Service Bus as the commands use it.
type serviceBusQueue struct {
	*servicebus.Queue
	name, namespace string
}

// commitsInFlight: Service Bus takes concurrent sends on one link.
func (serviceBusQueue) commitsInFlight() int { return 4 }

// maxMessageBytes: Service Bus says its limit (256 KB on Standard, more on
// Premium) only when a send exceeds it.
func (serviceBusQueue) maxMessageBytes() int { return 0 }

// background: the session pool, in a process that receives only (an
// ingress must not take sessions).
func (q serviceBusQueue) background(receiving bool) func(ctx context.Context) error {
	if !receiving {
		return nil
	}
	return q.Run
}

// ready: the namespace answers, and a receiving process's session accepts
// are not failing.
func (q serviceBusQueue) ready(receiving bool) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		if err := q.Ping(ctx); err != nil {
			return err
		}
		if receiving {
			return q.Ready(ctx)
		}
		return nil
	}
}

// addQueue adds q to h: its background work, its readiness check (unless
// check is false: a spool stands in for it) and its close.
func (h *host) addQueue(q queue, receiving, check bool) {
	if bg := q.background(receiving); bg != nil {
		h.loop(bg)
	}
	if check {
		ready := q.ready(receiving)
		h.check(ingress.Check{Name: "queue", Check: func(ctx context.Context) error {
			if err := ready(ctx); err != nil {
				return fmt.Errorf("the queue cannot take or hand out messages now: %w", err)
			}
			return nil
		}})
	}
	if c, ok := q.(interface{ Collector() prometheus.Collector }); ok {
		h.reg.MustRegister(c.Collector())
	}
	h.closer(q.Close)
}

// openQueue opens the queue named by a --queue URL. sessions, when
// positive, is how many Service Bus sessions a receiver may hold (the
// worker's concurrency) unless the URL sets max_sessions. reg, if not nil,
// receives the backend's instruments.
func openQueue(ctx context.Context, raw string, getenv env, log *slog.Logger, sessions int, reg prometheus.Registerer) (queue, error) {
	switch {
	case strings.HasPrefix(raw, "sqlite:"):
		cfg, err := sqlite.ParseURL(raw)
		if err != nil {
			return nil, usageError{fmt.Errorf("--queue: %w", err)}
		}
		if reg != nil {
			cfg.Metrics = sqlite.NewMetrics(reg)
		}
		q, err := sqlite.Open(ctx, cfg, log)
		if err != nil {
			return nil, fmt.Errorf("open queue: %w", err)
		}
		return sqliteQueue{Queue: q, path: cfg.Path}, nil
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
		ns := cfg.Namespace
		if cfg.ConnectionString != "" {
			ns = connectionStringHost(cfg.ConnectionString)
		}
		return serviceBusQueue{Queue: q, name: cfg.Queue, namespace: ns}, nil
	default:
		return nil, usageError{fmt.Errorf("--queue %q: unknown queue URL; use sqlite:<path> (e.g. %s) or servicebus://<namespace>.servicebus.windows.net/<queue>", raw, DefaultQueue)}
	}
}
