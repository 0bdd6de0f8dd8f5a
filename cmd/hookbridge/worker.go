package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/sync/errgroup"

	"github.com/hookbridge/hookbridge/consumer"
)

// workerFlags are the worker's settings.
type workerFlags struct {
	deliver         string
	concurrency     int
	deliveryTimeout time.Duration
	minBackoff      time.Duration
	maxBackoff      time.Duration
	shutdownTimeout time.Duration
}

// register adds the worker's flags; the shutdown timeout is the command's
// to register, since dev shares one with the ingress.
func (f *workerFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.deliver, "deliver", "stdout", "where events go: stdout (one JSON line each) or an http(s):// URL to POST them to")
	fs.IntVar(&f.concurrency, "concurrency", consumer.DefaultConcurrency, "deliveries in flight at once, across calls (a call's events always go one at a time)")
	fs.DurationVar(&f.deliveryTimeout, "delivery-timeout", consumer.DefaultDeliveryTimeout, "how long one delivery may take")
	fs.DurationVar(&f.minBackoff, "min-backoff", consumer.DefaultMinBackoff, "wait before the first retry of a failed delivery (doubles per attempt, with jitter)")
	fs.DurationVar(&f.maxBackoff, "max-backoff", consumer.DefaultMaxBackoff, "longest wait between retries")
}

// target builds the delivery handler named by --deliver.
func (f *workerFlags) target(stdout io.Writer) (consumer.Handler, error) {
	switch {
	case f.deliver == "stdout":
		return consumer.NewStdout(stdout), nil
	case strings.HasPrefix(f.deliver, "http://"), strings.HasPrefix(f.deliver, "https://"):
		h, err := consumer.NewHTTP(consumer.HTTPConfig{URL: f.deliver})
		if err != nil {
			return nil, usageError{fmt.Errorf("--deliver: %w", err)}
		}
		return h, nil
	default:
		return nil, usageError{fmt.Errorf("--deliver %q: use stdout or an http(s):// URL", consumer.Redact(f.deliver))}
	}
}

func (f *workerFlags) config() consumer.Config {
	return consumer.Config{
		Concurrency:     f.concurrency,
		DeliveryTimeout: f.deliveryTimeout,
		MinBackoff:      f.minBackoff,
		MaxBackoff:      f.maxBackoff,
		ShutdownTimeout: f.shutdownTimeout,
	}
}

func workerCommand(getenv env) *cobra.Command {
	var (
		f           workerFlags
		logs        logFlags
		queueURL    string
		adminListen string
	)
	cmd := &cobra.Command{
		Use:   "worker",
		Short: "Consume the queue and deliver events to the backend",
		Long: `Consume the queue and deliver each event to the backend: 2xx completes it,
a 4xx other than 408 and 429 dead-letters it, anything else is retried with
backoff until the queue's max delivery count dead-letters it. A call's events
are delivered one at a time, in order. Run several workers for more
throughput.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := logs.logger(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			target, err := f.target(cmd.OutOrStdout())
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			q, err := openQueue(ctx, queueURL, getenv, log, f.concurrency)
			if err != nil {
				return err
			}
			defer q.Close()
			reg := newRegistry()
			cfg := f.config()
			cfg.Logger, cfg.Metrics = log, consumer.NewMetrics(reg)
			w, err := consumer.New(q, target, cfg)
			if err != nil {
				return usageError{err}
			}
			adm, err := listen(adminListen, "--admin-listen")
			if err != nil {
				return err
			}
			log.Info("hookbridge worker started", "queue", queueURL, "deliver", consumer.Redact(f.deliver), "concurrency", cfg.Concurrency, "admin", adm.Addr().String(), "version", version)
			g, gctx := errgroup.WithContext(ctx)
			g.Go(func() error { return w.Run(gctx) })
			g.Go(func() error { return serveAdmin(gctx, adm, adminHandler(reg, q, func() error { return nil }), log) })
			err = g.Wait()
			log.Info("hookbridge worker stopped")
			return err
		},
	}
	f.register(cmd.Flags())
	cmd.Flags().DurationVar(&f.shutdownTimeout, "shutdown-timeout", consumer.DefaultShutdownTimeout, "on SIGTERM, how long deliveries in flight may finish before they are abandoned")
	logs.register(cmd.Flags())
	cmd.Flags().StringVar(&queueURL, "queue", DefaultQueue, queueHelp)
	cmd.Flags().StringVar(&adminListen, "admin-listen", "127.0.0.1:9091", "private admin listener (/healthz, /readyz, /metrics); never expose it")
	return cmd
}
