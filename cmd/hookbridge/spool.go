package main

import (
	"cmp"
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/pflag"

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
	f.after, f.maxMessages = spool.DefaultAfter, spool.DefaultMaxMessages
	fs.Var(boundedDuration{&f.after, time.Millisecond, time.Minute}, "spool-after", "with --spool: how long a send to Service Bus may take before its events go to the spool instead (healthy sends take milliseconds; the SDK's first retries of a brief blip fit in 1s)")
	fs.Var(&bounded[int64]{p: &f.maxMessages, min: 1, max: 1 << 40}, "spool-max-messages", "with --spool: the most events the spool holds (a few KB of disk each); past it requests get 503")
}

// check refuses, before anything is opened, a spool that cannot be used
// with queueURL, and spool settings given without --spool, where they would
// do nothing.
func (f *spoolFlags) check(fs *pflag.FlagSet, queueURL string) error {
	switch {
	case f.url != "" && !strings.HasPrefix(queueURL, "servicebus:"):
		return usageError{fmt.Errorf("--spool %q: the spool stands in for Service Bus; the embedded --queue is already local and durable, so leave --spool out", f.url)}
	case f.url != "" && !strings.HasPrefix(f.url, "sqlite:"):
		return usageError{fmt.Errorf("--spool %q: use a sqlite:<path> URL, e.g. sqlite:/var/lib/hookbridge/spool.db", f.url)}
	case f.url != "":
		if _, err := sqlite.ParseURL(f.url); err != nil {
			return usageError{fmt.Errorf("--spool: %w", err)}
		}
		return nil
	}
	for _, name := range []string{"spool-after", "spool-max-messages"} {
		if fs.Changed(name) {
			return usageError{fmt.Errorf("--%s is a setting of the spool, and there is no --spool: add --spool sqlite:<path> (for a Service Bus --queue), or leave --%s out", name, name)}
		}
	}
	return nil
}

// enabled reports whether --spool is set.
func (f *spoolFlags) enabled() bool { return f.url != "" }

// maxMessageBytes is the largest message the spool takes (its
// max_message_bytes), 0 without --spool or with a URL check refuses.
func (f *spoolFlags) maxMessageBytes() int {
	if f.url == "" {
		return 0
	}
	cfg, err := sqlite.ParseURL(f.url)
	if err != nil {
		return 0
	}
	return cmp.Or(cfg.MaxMessageBytes, sqlite.DefaultMaxMessageBytes)
}

// add puts a spool in front of q's sends when --spool is set, and returns
// what the ingress's group commit sends to: the spool, or q itself. The
// spool's store, forwarder, readiness (ready while the spool can take
// events, with its state) and close are added to h. Without --spool on
// Service Bus, it warns that Service Bus failures will be answered 503.
func (f *spoolFlags) add(ctx context.Context, h *host, q queue) (relay.BatchSender, error) {
	_, onServiceBus := q.(serviceBusQueue)
	switch {
	case f.url == "" && onServiceBus:
		h.log.Warn("no --spool: while Service Bus fails or is slow, requests get 503, and Call Automation, which documents no retry, loses those events; set --spool sqlite:<path on a persistent volume>")
		return q, nil
	case f.url == "":
		return q, nil
	}
	// check refused a spool beside the embedded queue, or not sqlite:.
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
	scfg := spool.Config{After: f.after, MaxMessages: f.maxMessages, Logger: h.log, Registerer: h.reg}
	if err := scfg.Validate(); err != nil {
		return nil, usageError{fmt.Errorf("--spool-after, --spool-max-messages: %w", err)}
	}
	store, err := sqlite.Open(ctx, cfg, h.log)
	if err != nil {
		return nil, fmt.Errorf("open the spool: %w", err)
	}
	h.closer(store.Close)
	sp, err := spool.New(q, store, scfg)
	if err != nil {
		return nil, usageError{err}
	}
	h.loop(store.Run)
	h.loop(sp.Run)
	h.check(ingress.Check{Name: "queue", Check: sp.Ready, State: func() any { return map[string]any{"spool": sp.State()} }})
	return sp, nil
}
