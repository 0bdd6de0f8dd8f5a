package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/sync/errgroup"

	"github.com/hookbridge/hookbridge/ingress"
	"github.com/hookbridge/hookbridge/relay"
)

// ingressFlags are the public listener's settings.
type ingressFlags struct {
	listen          string
	maxBody         int64
	maxConcurrent   int
	enqueueTimeout  time.Duration
	shutdownTimeout time.Duration
	batchMax        int
	batchLinger     time.Duration
	insecure        bool
}

func (f *ingressFlags) register(fs *pflag.FlagSet, defaultListen string) {
	fs.StringVar(&f.listen, "listen", defaultListen, "public listener address (the only port to expose)")
	fs.Int64Var(&f.maxBody, "max-body-bytes", ingress.DefaultMaxBodyBytes, "largest request body accepted; larger get 413")
	fs.IntVar(&f.maxConcurrent, "max-concurrent-requests", ingress.DefaultMaxConcurrentRequests, "requests in progress at once; more get 503")
	fs.DurationVar(&f.enqueueTimeout, "enqueue-timeout", ingress.DefaultEnqueueTimeout, "how long a request waits for the queue before it gets 503")
	fs.DurationVar(&f.shutdownTimeout, "shutdown-timeout", 30*time.Second, "on SIGTERM, how long requests in progress may finish")
	fs.IntVar(&f.batchMax, "batch-max-messages", 512, "most events in one group commit")
	fs.DurationVar(&f.batchLinger, "batch-linger", 0, "how long a group commit waits for more requests (0: commit as soon as the queue is free)")
}

// acsFlags are the Call Automation verifier's settings.
type acsFlags struct {
	audiences []string
	oidcURL   string
}

func (f *acsFlags) register(fs *pflag.FlagSet) {
	fs.StringSliceVar(&f.audiences, "acs-audience", nil, "ACS resource immutable resource ID accepted as the JWT audience (repeatable, or comma-separated)")
	fs.StringVar(&f.oidcURL, "acs-oidc-url", ingress.DefaultACSOIDCURL, "Call Automation OpenID Connect discovery document")
}

func ingressCommand(getenv env) *cobra.Command {
	var (
		f           ingressFlags
		acs         acsFlags
		logs        logFlags
		queueURL    string
		adminListen string
	)
	cmd := &cobra.Command{
		Use:   "ingress",
		Short: "Run the public listener: verify, normalize and durably queue events",
		Long: `Run the public listener (POST /acs/callbacks, GET /healthz) and the private
admin listener (/healthz, /readyz, /metrics). A request is answered 200 only
once all its events are durably in the queue.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := logs.logger(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			q, err := openQueue(ctx, queueURL, log)
			if err != nil {
				return err
			}
			defer q.Close()
			reg := newRegistry()
			var verifiers []ingress.Verifier
			var runners []func(context.Context) error
			if len(acs.audiences) > 0 {
				v, err := ingress.NewACSVerifier(ingress.ACSConfig{Audiences: acs.audiences, OIDCURL: acs.oidcURL, Logger: log})
				if err != nil {
					return usageError{err}
				}
				verifiers = append(verifiers, v)
				runners = append(runners, v.Run)
			}
			st, err := startIngress(ctx, &f, q, verifiers, reg, log)
			if err != nil {
				return err
			}
			defer st.close() // after Serve returned, before the queue closes
			adm, err := listen(adminListen, "--admin-listen")
			if err != nil {
				return err
			}
			defer adm.Close()
			log.Info("hookbridge ingress started", "listen", st.addr(), "admin", adm.Addr().String(), "queue", queueURL, "version", version)
			g, gctx := errgroup.WithContext(ctx)
			for _, r := range runners {
				g.Go(func() error { return r(gctx) })
			}
			st.run(gctx, g)
			g.Go(func() error { return serveAdmin(gctx, adm, adminHandler(reg, q, st.srv.Ready), log) })
			err = g.Wait()
			log.Info("hookbridge ingress stopped")
			return err
		},
	}
	f.register(cmd.Flags(), ":8080")
	cmd.Flags().BoolVar(&f.insecure, "insecure-allow-unauthenticated", false, "DEVELOPMENT ONLY: serve routes that have no verifier, accepting anyone")
	acs.register(cmd.Flags())
	logs.register(cmd.Flags())
	cmd.Flags().StringVar(&queueURL, "queue", DefaultQueue, "queue URL: sqlite:<path>[?options]")
	cmd.Flags().StringVar(&adminListen, "admin-listen", "127.0.0.1:9090", "private admin listener (/healthz, /readyz, /metrics); never expose it")
	return cmd
}

// newRegistry returns a registry with the Go and process collectors.
func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// runningIngress is a started public listener with its group commit.
type runningIngress struct {
	srv     *ingress.Server
	batcher *relay.Batcher
	l       net.Listener
}

// startIngress builds the group commit and the server and binds the
// listener.
func startIngress(_ context.Context, f *ingressFlags, q queue, verifiers []ingress.Verifier, reg *prometheus.Registry, log *slog.Logger) (*runningIngress, error) {
	// Two commits in flight: on the embedded queue, one writes while the
	// previous one's fsync completes (see relay/sqlite's walSyncer).
	b, err := relay.NewBatcher(q, relay.BatchConfig{MaxMessages: f.batchMax, Linger: f.batchLinger, Timeout: f.enqueueTimeout, MaxInFlight: 2}, relay.NewMetrics(reg))
	if err != nil {
		return nil, usageError{err}
	}
	srv, err := ingress.New(ingress.Config{
		Publisher:                    b,
		ACSVerifiers:                 verifiers,
		InsecureAllowUnauthenticated: f.insecure,
		MaxBodyBytes:                 f.maxBody,
		MaxConcurrentRequests:        f.maxConcurrent,
		EnqueueTimeout:               f.enqueueTimeout,
		ShutdownTimeout:              f.shutdownTimeout,
		Logger:                       log,
		Registerer:                   reg,
	})
	if err != nil {
		b.Close()
		return nil, usageError{err}
	}
	l, err := listen(f.listen, "--listen")
	if err != nil {
		b.Close()
		return nil, err
	}
	return &runningIngress{srv: srv, batcher: b, l: l}, nil
}

func (r *runningIngress) addr() string { return r.l.Addr().String() }

// run serves in g until ctx ends.
func (r *runningIngress) run(ctx context.Context, g *errgroup.Group) {
	g.Go(func() error { return r.srv.Serve(ctx, r.l) })
}

// close commits what the batcher still holds; call it after Serve returned.
// It is safe to call more than once.
func (r *runningIngress) close() {
	r.batcher.Close()
	r.l.Close()
}

// adminHandler serves health, readiness (keys loaded and queue reachable)
// and metrics.
func adminHandler(reg *prometheus.Registry, q queue, ready func() error) http.Handler {
	return ingress.AdminHandler(reg,
		ingress.Check{Name: "ingress", Check: func(context.Context) error { return ready() }},
		ingress.Check{Name: "queue", Check: func(ctx context.Context) error {
			if err := q.Ping(ctx); err != nil {
				return fmt.Errorf("queue unreachable: %w", err)
			}
			return nil
		}},
	)
}
