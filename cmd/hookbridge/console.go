package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/hookbridge/hookbridge/internal/console"
	"github.com/hookbridge/hookbridge/relay/sqlite"
)

// envConsoleToken holds the console's tokens (or _FILE, a file with them).
const envConsoleToken = "HOOKBRIDGE_CONSOLE_TOKEN"

// consoleDrain is how long a stopping console waits for its requests: a
// replay or purge settling the chunk in hand (see console.Server.StopActions).
const consoleDrain = 30 * time.Second

func consoleCommand(getenv env) *cobra.Command {
	var (
		listen, queueURL, spoolURL string
		metricsFrom, proxies       []string
		metricsInterval            time.Duration
		logs                       logFlags
	)
	cmd := &cobra.Command{
		Use:   "console",
		Short: "Serve a web console for the queue and its dead-letter queue",
		Long: `Serve a web console on a private listener: the queue at a glance, a call's
events wherever they are (find by event ID, message ID or correlation ID),
and dead-letter triage (filter, inspect, replay, purge; each action
previewed first and logged).

Without a token the console listens on loopback only and answers only
loopback names. To listen elsewhere, set ` + envConsoleToken + ` (or
` + envConsoleToken + `_FILE): comma-separated tokens of at least 16
characters, each optionally prefixed with a name ("alice:<token>") that
actions are logged under. Put it behind TLS (a reverse proxy or an SSH
tunnel) when it is not on loopback, and name the proxy with
--trusted-proxy so that each client keeps its own address.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := logs.logger(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			raw, err := secret(getenv, envConsoleToken)
			if err != nil {
				return err
			}
			tokens, err := console.ParseTokens(raw)
			if err != nil {
				return usageError{fmt.Errorf("%s: %w", envConsoleToken, err)}
			}
			if len(tokens) == 0 && !console.IsLoopbackListen(listen) {
				return usageError{fmt.Errorf("--listen %s is not a loopback address: set %s (or %s_FILE) so the console asks for a token, or listen on 127.0.0.1", listen, envConsoleToken, envConsoleToken)}
			}
			if metricsInterval < time.Second {
				return usageError{fmt.Errorf("--metrics-interval %s: use 1s or more", metricsInterval)}
			}
			trusted, err := console.ParseTrustedProxies(proxies)
			if err != nil {
				return usageError{fmt.Errorf("--trusted-proxy: %w", err)}
			}
			if spoolURL != "" && !strings.HasPrefix(spoolURL, "sqlite:") {
				return usageError{fmt.Errorf("--spool %q: the spool is an embedded queue file: sqlite:<path>", spoolURL)}
			}
			for _, u := range []string{queueURL, spoolURL} {
				if err := sqliteFileExists(u); err != nil {
					return err
				}
			}
			ctx := cmd.Context()
			h := newHost(log)
			defer h.closeUnlessRun()
			q, err := openQueue(ctx, queueURL, getenv, log, 0, nil)
			if err != nil {
				return err
			}
			// The embedded queue's background work keeps its write-ahead
			// log short; a Service Bus queue's would take sessions, which a
			// console must not (background(false) has none).
			h.addQueue(q, false, false)
			cq, ok := q.(console.Queue)
			if !ok {
				return fmt.Errorf("--queue %s: this backend cannot be browsed", redactQueueURL(queueURL))
			}
			cfg := console.Config{
				Queue: cq, QueueName: redactQueueURL(queueURL),
				MetricsFrom: metricsFrom, MetricsInterval: metricsInterval,
				Tokens: tokens, TrustedProxies: trusted, Logger: log,
			}
			if spoolURL != "" {
				sp, err := openQueue(ctx, spoolURL, getenv, log, 0, nil)
				if err != nil {
					return fmt.Errorf("--spool: %w", err)
				}
				h.addQueue(sp, false, false)
				cfg.Spool, cfg.SpoolName = sp.(sqliteQueue), redactQueueURL(spoolURL)
			}
			srv, err := console.New(cfg)
			if err != nil {
				return usageError{err}
			}
			l, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("console listener: %w", err)
			}
			h.closer(closeListener(l))
			h.loop(srv.Run)
			h.serve(func(ctx context.Context) error {
				defer context.AfterFunc(ctx, srv.StopActions)()
				return serveConsole(ctx, l, srv, log)
			})
			// A replay or purge in progress stops at its next chunk, after
			// settling the chunk in hand; the listener waits for it.
			h.grace = consoleDrain + shutdownMargin
			log.Info("console listening", "url", "http://"+l.Addr().String()+"/", "queue", cfg.QueueName,
				"token_required", len(tokens) > 0, "metrics_from", redactedURLs(metricsFrom), "spool", cfg.SpoolName)
			return h.run(ctx)
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:9092", "address to serve the console on; a non-loopback address requires $"+envConsoleToken)
	cmd.Flags().StringVar(&queueURL, "queue", DefaultQueue, queueHelp)
	cmd.Flags().StringVar(&spoolURL, "spool", "", "the spool of a Service Bus ingress (sqlite:<path>), to show its depth and oldest event")
	cmd.Flags().StringSliceVar(&metricsFrom, "metrics-from", nil, "an admin listener's metrics URL for live rates, e.g. http://127.0.0.1:9090/metrics (repeatable)")
	cmd.Flags().DurationVar(&metricsInterval, "metrics-interval", console.DefaultMetricsInterval, "how often --metrics-from URLs are scraped")
	cmd.Flags().StringSliceVar(&proxies, "trusted-proxy", nil, "a reverse proxy in front of the console, its IP address (or a CIDR range of proxies only; repeatable): its requests count as from the client its X-Forwarded-For names, for the login limit and the action logs")
	logs.register(cmd.Flags())
	return cmd
}

// redactedURLs is urls without their passwords, for the log.
func redactedURLs(urls []string) []string {
	out := make([]string, len(urls))
	for i, u := range urls {
		out[i] = console.RedactedURL(u)
	}
	return out
}

// sqliteFileExists refuses an embedded queue URL whose file does not exist:
// opening it would create an empty queue, and the console would show a
// typo as an empty queue.
func sqliteFileExists(raw string) error {
	if !strings.HasPrefix(raw, "sqlite:") {
		return nil
	}
	cfg, err := sqlite.ParseURL(raw)
	if err != nil {
		return usageError{fmt.Errorf("%s: %w", raw, err)}
	}
	if _, err := os.Stat(cfg.Path); err != nil {
		return usageError{fmt.Errorf("%s: no queue file at %s (%w); give the path the ingress and workers use", raw, cfg.Path, errors.Unwrap(err))}
	}
	return nil
}

// redactQueueURL drops a queue URL's options and anything that looks like
// credentials, for display.
func redactQueueURL(raw string) string {
	raw, _, _ = strings.Cut(raw, "?")
	if i := strings.Index(raw, "@"); i >= 0 {
		if j := strings.Index(raw, "://"); j >= 0 && j < i {
			raw = raw[:j+3] + raw[i+1:]
		}
	}
	return raw
}

// serveConsole serves the console on l until ctx ends, then shuts down,
// letting requests in progress (a replay) finish for a while.
func serveConsole(ctx context.Context, l net.Listener, h http.Handler, log *slog.Logger) error {
	return serveUntil(ctx, "console listener", l, &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      3 * time.Minute, // a replay of a thousand messages
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}, consoleDrain)
}
