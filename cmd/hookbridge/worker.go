package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

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

// maxConcurrency is the most deliveries one worker runs at once.
const maxConcurrency = 1024

// register adds the worker's flags; the shutdown timeout is the command's
// to register, since dev shares one with the ingress. A numeric value the
// worker cannot honour as given (zero, negative, too large) is refused when
// the flag is parsed, from the command line or the environment: a usage
// error, exit status 2.
func (f *workerFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.deliver, "deliver", "stdout", "where events go: stdout (one JSON line each) or an http(s):// URL to POST them to")
	f.concurrency = consumer.DefaultConcurrency
	fs.Var(&bounded[int]{p: &f.concurrency, min: 1, max: maxConcurrency}, "concurrency", "deliveries in flight at once, across calls (a call's events always go one at a time), 1 to 1024")
	f.deliveryTimeout, f.minBackoff, f.maxBackoff = consumer.DefaultDeliveryTimeout, consumer.DefaultMinBackoff, consumer.DefaultMaxBackoff
	fs.Var(positiveDuration{&f.deliveryTimeout}, "delivery-timeout", "how long one delivery may take; a slower one is retried, so keep it above the backend's slowest answer")
	fs.Var(positiveDuration{&f.minBackoff}, "min-backoff", "wait before the first retry of a failed delivery (doubles per attempt, with jitter)")
	fs.Var(positiveDuration{&f.maxBackoff}, "max-backoff", "longest wait between retries")
}

// target builds the delivery handler named by --deliver, traced with h's
// tracer provider.
func (f *workerFlags) target(stdout io.Writer, h *host) (consumer.Handler, error) {
	switch {
	case f.deliver == "stdout":
		return consumer.NewStdout(stdout), nil
	case strings.HasPrefix(f.deliver, "http://"), strings.HasPrefix(f.deliver, "https://"):
		t, err := consumer.NewHTTP(consumer.HTTPConfig{URL: f.deliver, TracerProvider: h.tp})
		if err != nil {
			return nil, usageError{fmt.Errorf("--deliver: %w", err)}
		}
		return t, nil
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

// buildWorker adds a worker delivering q's events to target to h.
func buildWorker(h *host, f *workerFlags, q queue, target consumer.Handler) (*consumer.Worker, error) {
	cfg := f.config()
	cfg.Logger, cfg.Metrics = h.log, consumer.NewMetrics(h.reg)
	cfg.TracerProvider = h.tp
	cfg.TraceQueue, cfg.TraceQueueAttributes = q.traceQueue()
	w, err := consumer.New(q, target, cfg)
	if err != nil {
		return nil, usageError{err}
	}
	h.serve(w.Run)
	h.grace = max(h.grace, f.shutdownTimeout+shutdownMargin)
	return w, nil
}

func workerCommand(getenv env) *cobra.Command {
	var (
		f      workerFlags
		common commonFlags
	)
	cmd := &cobra.Command{
		Use:   "worker",
		Short: "Consume the queue and deliver events to the backend",
		Long: `Consume the queue and deliver each event to the backend: 2xx completes it,
a 3xx or a 4xx other than 408 and 429 dead-letters it (redirects are not
followed), anything else is retried with backoff until the last delivery
the queue allows, which dead-letters it. A call's events are delivered one
at a time, in order. Run several workers for more throughput.

On SIGTERM the worker stops receiving, lets deliveries in flight finish
within --shutdown-timeout, abandons the rest for immediate redelivery, and
exits once everything it held is settled.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			h, err := common.host(cmd, getenv, serviceWorker)
			if err != nil {
				return err
			}
			defer h.closeUnlessRun()
			target, err := f.target(cmd.OutOrStdout(), h)
			if err != nil {
				return err
			}
			// Checked before the queue is opened, so a refused start
			// creates nothing.
			if err := f.config().Validate(); err != nil {
				return usageError{err}
			}
			q, err := common.openQueue(cmd.Context(), getenv, h, f.concurrency)
			if err != nil {
				return err
			}
			h.addQueue(q, true, true)
			if _, err := buildWorker(h, &f, q, target); err != nil {
				return err
			}
			admin, err := h.listenAdmin(common.adminListen)
			if err != nil {
				return err
			}
			h.log.Info("hookbridge worker started", "queue", common.queueURL, "deliver", consumer.Redact(f.deliver),
				"concurrency", f.concurrency, "delivery_timeout", f.deliveryTimeout, "min_backoff", f.minBackoff,
				"max_backoff", f.maxBackoff, "shutdown_timeout", f.shutdownTimeout, "admin", admin, "version", version)
			err = h.run(cmd.Context())
			h.log.Info("hookbridge worker stopped")
			return err
		},
	}
	f.register(cmd.Flags())
	f.shutdownTimeout = consumer.DefaultShutdownTimeout
	cmd.Flags().Var(positiveDuration{&f.shutdownTimeout}, "shutdown-timeout", "on SIGTERM, how long deliveries in flight may finish before they are abandoned for immediate redelivery")
	common.register(cmd.Flags(), "127.0.0.1:9091")
	return cmd
}
