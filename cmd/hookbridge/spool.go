package main

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"
	"golang.org/x/sync/errgroup"

	"github.com/hookbridge/hookbridge/ingress"
	"github.com/hookbridge/hookbridge/relay"
	"github.com/hookbridge/hookbridge/relay/spool"
	"github.com/hookbridge/hookbridge/relay/sqlite"
)

// Spool store defaults where the --spool URL leaves them out: a short lock,
// since the forwarder renews what it holds and a crashed run's events wait
// for their locks to expire; and deliveries that never dead-letter in
// practice (each restart or lost lock is one).
const (
	spoolLock        = 15 * time.Second
	spoolMaxDelivery = 10000
)

// spoolFlags are the settings of the Service Bus ingress's local spool.
type spoolFlags struct {
	url         string
	after       time.Duration
	maxMessages int64
}

func (f *spoolFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.url, "spool", "", "local spool for a Service Bus --queue, sqlite:<path>[?options] on a persistent volume: when Service Bus fails or is slow, events are committed there and answered 200, then forwarded in each call's order")
	fs.DurationVar(&f.after, "spool-after", spool.DefaultAfter, "with --spool: how long a send to Service Bus may take before its events go to the spool instead (healthy sends take milliseconds; the SDK's first retries of a brief blip fit in 1s)")
	fs.Int64Var(&f.maxMessages, "spool-max-messages", spool.DefaultMaxMessages, "with --spool: the most events the spool holds (a few KB of disk each); past it requests get 503")
}

// spooling is the ingress's spool, when --spool is set, around its queue.
type spooling struct {
	q     queue // what the ingress sends to and checks: the spool, or the queue itself
	sp    *spool.Spool
	store *sqlite.Queue
}

// open puts a spool in front of q's sends when --spool is set. Without it
// on Service Bus, it warns that Service Bus failures will be answered 503.
func (f *spoolFlags) open(ctx context.Context, q queue, reg prometheus.Registerer, log *slog.Logger) (*spooling, error) {
	_, onServiceBus := q.(serviceBusQueue)
	switch {
	case f.url == "" && onServiceBus:
		log.Warn("no --spool: while Service Bus fails or is slow, requests get 503, and Call Automation, which documents no retry, loses those events; set --spool sqlite:<path on a persistent volume>")
		return &spooling{q: q}, nil
	case f.url == "":
		return &spooling{q: q}, nil
	case !onServiceBus:
		return nil, usageError{fmt.Errorf("--spool %q: the spool stands in for Service Bus; the embedded --queue is already local and durable, so leave --spool out", f.url)}
	case !strings.HasPrefix(f.url, "sqlite:"):
		return nil, usageError{fmt.Errorf("--spool %q: use a sqlite:<path> URL, e.g. sqlite:/var/lib/hookbridge/spool.db", f.url)}
	}
	cfg, err := sqlite.ParseURL(f.url)
	if err != nil {
		return nil, usageError{fmt.Errorf("--spool: %w", err)}
	}
	if cfg.LockDuration == 0 {
		cfg.LockDuration = spoolLock
	}
	if cfg.MaxDeliveryCount == 0 {
		cfg.MaxDeliveryCount = spoolMaxDelivery
	}
	scfg := spool.Config{After: f.after, MaxMessages: f.maxMessages, Logger: log, Registerer: reg}
	if err := scfg.Validate(); err != nil {
		return nil, usageError{fmt.Errorf("--spool-after, --spool-max-messages: %w", err)}
	}
	store, err := sqlite.Open(ctx, cfg, log)
	if err != nil {
		return nil, fmt.Errorf("open the spool: %w", err)
	}
	sp, err := spool.New(q, store, scfg)
	if err != nil {
		store.Close()
		return nil, usageError{err}
	}
	return &spooling{q: spooledQueue{queue: q, sp: sp}, sp: sp, store: store}, nil
}

// run starts the forwarder in g.
func (s *spooling) run(ctx context.Context, g *errgroup.Group) {
	if s.sp != nil {
		g.Go(func() error { return s.sp.Run(ctx) })
	}
}

// close closes the spool's store; call it after the group commit closed.
func (s *spooling) close() error {
	if s.store == nil {
		return nil
	}
	return s.store.Close()
}

// spooledQueue is a queue whose sends go through a spool. The ingress is
// ready while the spool can take events, whatever Service Bus does.
type spooledQueue struct {
	queue
	sp *spool.Spool
}

func (q spooledQueue) SendBatch(ctx context.Context, msgs []relay.Message) error {
	return q.sp.SendBatch(ctx, msgs)
}

func (q spooledQueue) Ping(ctx context.Context) error { return q.sp.Ready(ctx) }

// queueCheck is the readiness check of the queue the ingress sends to, with
// the spool's state when there is one.
func queueCheck(q queue) ingress.Check {
	if sq, ok := q.(spooledQueue); ok {
		return ingress.Check{Name: "queue", Check: sq.Ping, State: func() any { return map[string]any{"spool": sq.sp.State()} }}
	}
	return ingress.Check{Name: "queue", Check: func(ctx context.Context) error {
		if err := q.Ping(ctx); err != nil {
			return fmt.Errorf("queue unreachable: %w", err)
		}
		return nil
	}}
}
