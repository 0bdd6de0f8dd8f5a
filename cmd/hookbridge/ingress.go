package main

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/hookbridge/hookbridge/ingress"
	"github.com/hookbridge/hookbridge/relay"
	"github.com/hookbridge/hookbridge/relay/sqlite"
)

// Secret environment variables (each also as <NAME>_FILE).
const (
	envACSAPIKeys        = "HOOKBRIDGE_ACS_API_KEYS"
	envEventGridAPIKeys  = "HOOKBRIDGE_EVENTGRID_API_KEYS"
	envCallbackSigning   = "HOOKBRIDGE_CALLBACK_SIGNING_KEYS"
	envServiceBusConnStr = "HOOKBRIDGE_SERVICEBUS_CONNECTION_STRING"
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
	allowedOrigins  []string
	allowedRate     string
	rateLimit       float64
	rateBurst       int
	trustedProxies  []string
	replayCacheSize int
	replayDefence   string
	drainDelay      time.Duration
	bodiesInFlight  int64
}

// defaultDrainDelay is how long a stopping ingress keeps serving with
// readiness failing: load balancers notice a failing readiness probe within
// a probe period or two, and Kubernetes takes a few seconds to take a
// terminating pod out of its endpoints. 5s covers both for probe periods of
// a few seconds and, with --shutdown-timeout, fits a 30s grace period only
// if the last commits finish within 25s (they take milliseconds).
const defaultDrainDelay = 5 * time.Second

func (f *ingressFlags) register(fs *pflag.FlagSet, defaultListen string, defaultDrain time.Duration) {
	fs.StringVar(&f.listen, "listen", defaultListen, "public listener address (the only port to expose)")
	f.maxBody, f.maxConcurrent, f.batchMax, f.bodiesInFlight = ingress.DefaultMaxBodyBytes, ingress.DefaultMaxConcurrentRequests, 512, ingress.DefaultMaxBodyBytesInFlight
	f.enqueueTimeout, f.shutdownTimeout, f.batchLinger, f.drainDelay = ingress.DefaultEnqueueTimeout, ingress.DefaultShutdownTimeout, 2*time.Millisecond, defaultDrain
	fs.Var(&bounded[int64]{p: &f.maxBody, min: 1, max: ingress.MaxBodyBytesLimit}, "max-body-bytes", "largest request body accepted; larger get 413")
	fs.Var(&bounded[int]{p: &f.maxConcurrent, min: 1, max: 1 << 20}, "max-concurrent-requests", "requests in progress at once; more wait for a slot up to --enqueue-timeout, then get 503")
	fs.Var(positiveDuration{&f.enqueueTimeout}, "enqueue-timeout", "how long a request waits for the queue before it gets 503")
	fs.Var(positiveDuration{&f.shutdownTimeout}, "shutdown-timeout", "on SIGTERM, how long requests in progress may finish")
	fs.Var(&bounded[int]{p: &f.batchMax, min: 1, max: 1 << 16}, "batch-max-messages", "most events in one group commit")
	fs.Var(boundedDuration{&f.batchLinger, 0, time.Second}, "batch-linger", "how long a group commit waits for more requests while they arrive fast enough to gather several (0: commit as soon as the queue is free)")
	fs.StringSliceVar(&f.allowedOrigins, "eventgrid-allowed-origins", []string{ingress.DefaultEventGridOrigin}, "origins the CloudEvents abuse-protection handshake (OPTIONS /eventgrid) consents to; * for any")
	fs.StringVar(&f.allowedRate, "eventgrid-allowed-rate", "*", "WebHook-Allowed-Rate answered to that handshake: requests per minute, or *")
	fs.Float64Var(&f.rateLimit, "rate-limit", 0, "requests per second allowed per client IP (0: no per-client limit); excess get 429")
	fs.Var(&bounded[int]{p: &f.rateBurst, min: 0, max: 1 << 30}, "rate-burst", "burst allowed above --rate-limit (default: one second's worth)")
	fs.StringSliceVar(&f.trustedProxies, "trusted-proxies", nil, "CIDRs of reverse proxies whose X-Forwarded-For names the client (for --rate-limit and logs)")
	fs.IntVar(&f.replayCacheSize, "replay-cache-size", ingress.DefaultReplayCacheSize, "Call Automation tokens remembered with the body they delivered, until they expire (negative: replay defence off)")
	fs.StringVar(&f.replayDefence, "acs-replay-defence", string(ingress.ReplayAuto), "a Call Automation token reused with another body: auto refuses it only if the token has a jti (else accepts and logs it), strict always refuses, off does not check")
	fs.Var(boundedDuration{&f.drainDelay, 0, 10 * time.Minute}, "drain-delay", "on SIGTERM, how long the listener keeps serving with readiness failing, before it stops accepting")
	fs.Var(&bounded[int64]{p: &f.bodiesInFlight, min: 1, max: 1 << 40}, "max-body-bytes-in-flight", "request bodies being parsed and committed at once, in bytes (at least --max-body-bytes); more wait, then get 503")
}

// verifierFlags are the settings of the JWT verifiers.
type verifierFlags struct {
	acsAudiences   []string
	acsOIDCURL     string
	entraTenant    string
	entraAudiences []string
	entraAppID     string
	entraAuthority string
	entraCacheSize int
}

func (f *verifierFlags) register(fs *pflag.FlagSet) {
	fs.StringSliceVar(&f.acsAudiences, "acs-audience", nil, "ACS resource immutable resource ID accepted as the Call Automation JWT audience (repeatable, or comma-separated)")
	fs.StringVar(&f.acsOIDCURL, "acs-oidc-url", ingress.DefaultACSOIDCURL, "Call Automation OpenID Connect discovery document")
	fs.StringVar(&f.entraTenant, "eventgrid-entra-tenant", "", "Entra tenant ID of the webhook application Event Grid delivers to (secured delivery)")
	fs.StringSliceVar(&f.entraAudiences, "eventgrid-entra-audience", nil, "that application's client ID or application ID URI, as set on the event subscription")
	fs.StringVar(&f.entraAppID, "eventgrid-entra-app-id", ingress.EventGridAppID, "the caller required in appid/azp: Event Grid's application ID (Azure Government: 54316b56-3481-47f9-8f30-0300f5542a7b)")
	fs.StringVar(&f.entraAuthority, "entra-authority", ingress.DefaultEntraAuthority, "Microsoft Entra authority; discovery is <authority>/<tenant>/v2.0/.well-known/openid-configuration")
	fs.IntVar(&f.entraCacheSize, "entra-cache-size", ingress.DefaultEntraCacheSize, "verified Entra tokens remembered until they expire, so Event Grid's reused token skips the RSA check (negative: off)")
}

// verifiers are the configured verifiers of both routes and the loops that
// keep their keys fresh.
type verifiers struct {
	acs, eventGrid []ingress.Verifier
	runners        []func(context.Context) error
}

// build creates every verifier the flags and secrets configure.
func (f *verifierFlags) build(getenv env, log *slog.Logger) (*verifiers, error) {
	vs := &verifiers{}
	if len(f.acsAudiences) > 0 {
		v, err := ingress.NewACSVerifier(ingress.ACSConfig{Audiences: f.acsAudiences, OIDCURL: f.acsOIDCURL, Logger: log})
		if err != nil {
			return nil, usageError{err}
		}
		vs.acs = append(vs.acs, v)
		vs.runners = append(vs.runners, v.Run)
	}
	if f.entraTenant != "" || len(f.entraAudiences) > 0 {
		v, err := ingress.NewEntraVerifier(ingress.EntraConfig{Tenant: f.entraTenant, Audiences: f.entraAudiences,
			AppID: f.entraAppID, Authority: f.entraAuthority, CacheSize: f.entraCacheSize, Logger: log})
		if err != nil {
			return nil, usageError{err}
		}
		vs.eventGrid = append(vs.eventGrid, v)
		vs.runners = append(vs.runners, v.Run)
	}
	for _, k := range []struct {
		env    string
		target *[]ingress.Verifier
	}{{envACSAPIKeys, &vs.acs}, {envEventGridAPIKeys, &vs.eventGrid}} {
		raw, err := secret(getenv, k.env)
		if err != nil {
			return nil, err
		}
		if keys := ingress.ParseAPIKeys(raw); len(keys) > 0 {
			v, err := ingress.NewAPIKeyVerifier(keys)
			if err != nil {
				return nil, usageError{fmt.Errorf("%s: %w", k.env, err)}
			}
			*k.target = append(*k.target, v)
		}
	}
	raw, err := secret(getenv, envCallbackSigning)
	if err != nil {
		return nil, err
	}
	if raw != "" {
		keys, err := ingress.ParseCallbackKeys(raw)
		if err != nil {
			return nil, usageError{fmt.Errorf("%s: %w", envCallbackSigning, err)}
		}
		v, err := ingress.NewSignedURLVerifier(keys)
		if err != nil {
			return nil, usageError{err}
		}
		vs.acs = append(vs.acs, v)
	}
	return vs, nil
}

func ingressCommand(getenv env) *cobra.Command {
	var (
		f      ingressFlags
		vf     verifierFlags
		sf     spoolFlags
		common commonFlags
	)
	cmd := &cobra.Command{
		Use:   "ingress",
		Short: "Run the public listener: verify, normalize and durably queue events",
		Long: `Run the public listener (POST /acs/callbacks, POST and OPTIONS /eventgrid,
GET /healthz) and the private admin listener (/healthz, /readyz, /metrics).
A request is answered 200 only once all its events are durably in the queue.

A route is served when at least one verifier is configured for it, and then
every configured verifier must pass:
  /acs/callbacks  --acs-audience (Call Automation JWT), $` + envACSAPIKeys + `,
                  $` + envCallbackSigning + ` (signed callback URLs)
  /eventgrid      --eventgrid-entra-tenant and --eventgrid-entra-audience
                  (Microsoft Entra JWT), $` + envEventGridAPIKeys + `
Secrets come from those environment variables, or from files named by the
same variables with _FILE appended.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			h, err := common.host(cmd, getenv, serviceIngress)
			if err != nil {
				return err
			}
			defer h.closeUnlessRun()
			vs, err := vf.build(getenv, h.log)
			if err != nil {
				return err
			}
			if err := f.check(vs, common.queueURL, &sf); err != nil {
				return err
			}
			if err := sf.check(cmd.Flags(), common.queueURL); err != nil {
				return err
			}
			q, err := common.openQueue(cmd.Context(), getenv, h, 0)
			if err != nil {
				return err
			}
			h.addQueue(q, false, !sf.enabled())
			st, err := buildIngress(cmd.Context(), h, &f, &sf, q, vs)
			if err != nil {
				return err
			}
			admin, err := h.listenAdmin(common.adminListen)
			if err != nil {
				return err
			}
			h.log.Info("hookbridge ingress started", "listen", st.addr(), "admin", admin, "queue", common.queueURL, "version", version)
			err = h.run(cmd.Context())
			h.log.Info("hookbridge ingress stopped")
			return err
		},
	}
	f.register(cmd.Flags(), ":8080", defaultDrainDelay)
	cmd.Flags().BoolVar(&f.insecure, "insecure-allow-unauthenticated", false, "DEVELOPMENT ONLY: serve routes that have no verifier, accepting anyone")
	vf.register(cmd.Flags())
	sf.register(cmd.Flags())
	common.register(cmd.Flags(), "127.0.0.1:9090")
	return cmd
}

// config is the ingress's configuration from its flags and verifiers,
// without the parts a running host supplies (publisher, logger, metrics,
// tracing).
func (f *ingressFlags) config(vs *verifiers) (ingress.Config, error) {
	var proxies []netip.Prefix
	for _, p := range f.trustedProxies {
		prefix, err := netip.ParsePrefix(p)
		if err != nil {
			addr, aerr := netip.ParseAddr(p)
			if aerr != nil {
				return ingress.Config{}, usageError{fmt.Errorf("--trusted-proxies %q: not a CIDR or an IP address", p)}
			}
			prefix = netip.PrefixFrom(addr, addr.BitLen())
		}
		proxies = append(proxies, prefix)
	}
	defence, err := ingress.ParseReplayDefence(f.replayDefence)
	if err != nil {
		return ingress.Config{}, usageError{fmt.Errorf("--acs-replay-defence: %w", err)}
	}
	return ingress.Config{
		ACSVerifiers:                 vs.acs,
		EventGridVerifiers:           vs.eventGrid,
		ReplayCacheSize:              f.replayCacheSize,
		ReplayDefence:                defence,
		EventGridAllowedOrigins:      f.allowedOrigins,
		EventGridAllowedRate:         f.allowedRate,
		RateLimit:                    f.rateLimit,
		RateBurst:                    f.rateBurst,
		TrustedProxies:               proxies,
		InsecureAllowUnauthenticated: f.insecure,
		MaxBodyBytes:                 f.maxBody,
		MaxBodyBytesInFlight:         max(f.bodiesInFlight, f.maxBody),
		MaxConcurrentRequests:        f.maxConcurrent,
		EnqueueTimeout:               f.enqueueTimeout,
		DrainDelay:                   f.drainDelay,
		ShutdownTimeout:              f.shutdownTimeout,
	}, nil
}

// check refuses flags the ingress cannot honour before anything is opened
// or created (the queue file, the spool); queueURL is --queue, and sf the
// spool's flags: the largest message of the local store that takes the
// events (the embedded queue, or the spool) must hold the largest body.
func (f *ingressFlags) check(vs *verifiers, queueURL string, sf *spoolFlags) error {
	if f.rateLimit < 0 {
		return usageError{fmt.Errorf("--rate-limit %g: must not be negative (0: no per-client limit)", f.rateLimit)}
	}
	cfg, err := f.config(vs)
	if err != nil {
		return err
	}
	cfg.Publisher = noPublisher{}
	switch {
	case sf.enabled():
		cfg.MaxMessageBytes = sf.maxMessageBytes()
	case strings.HasPrefix(queueURL, "sqlite:"):
		// A URL that does not parse is reported when the queue opens.
		if qc, err := sqlite.ParseURL(queueURL); err == nil {
			cfg.MaxMessageBytes = cmp.Or(qc.MaxMessageBytes, sqlite.DefaultMaxMessageBytes)
		}
	}
	if err := cfg.Validate(); err != nil {
		return usageError{err}
	}
	if err := (relay.BatchConfig{MaxMessages: f.batchMax, Linger: f.batchLinger, Timeout: f.enqueueTimeout}).Validate(); err != nil {
		return usageError{err}
	}
	return nil
}

// noPublisher stands in for the queue while flags are checked.
type noPublisher struct{}

func (noPublisher) Publish(context.Context, []relay.Message) error { return relay.ErrClosed }

// runningIngress is the public listener and its group commit, as a host
// part.
type runningIngress struct {
	srv     *ingress.Server
	batcher *relay.Batcher
	l       net.Listener
}

func (r *runningIngress) addr() string { return r.l.Addr().String() }

// buildIngress adds the public listener to h: the verifiers' key refresh,
// the group commit into q (through a spool when --spool is set), the
// server, and readiness. The listener is bound at once; it serves once h
// runs, and drains before the admin listener closes.
func buildIngress(ctx context.Context, h *host, f *ingressFlags, sf *spoolFlags, q queue, vs *verifiers) (*runningIngress, error) {
	cfg, err := f.config(vs)
	if err != nil {
		return nil, err
	}
	sender, err := sf.add(ctx, h, q)
	if err != nil {
		return nil, err
	}
	queueName, queueAttrs := q.traceQueue()
	sender = relay.TraceCommits(sender, h.tp, queueName, queueAttrs...)
	b, err := relay.NewBatcher(sender, relay.BatchConfig{MaxMessages: f.batchMax, Linger: f.batchLinger, Timeout: f.enqueueTimeout,
		MaxInFlight: q.commitsInFlight()}, relay.NewMetrics(h.reg))
	if err != nil {
		return nil, usageError{err}
	}
	// The group commit runs until the server has stopped (its requests
	// are all answered by then); the closer covers a start that fails
	// before the loops run, and closes it before the queue.
	h.loop(b.Run)
	h.closer(func() error { b.Close(); return nil })
	cfg.Publisher = b
	cfg.MaxMessageBytes = q.maxMessageBytes()
	if sf.enabled() {
		// Service Bus says its limit only when a send exceeds it; the
		// spool, which takes the events while it fails, has its own.
		cfg.MaxMessageBytes = sf.maxMessageBytes()
	}
	cfg.Logger, cfg.Registerer, cfg.TracerProvider = h.log, h.reg, h.tp
	cfg.TraceQueue, cfg.TraceQueueAttributes = queueName, queueAttrs
	srv, err := ingress.New(cfg)
	if err != nil {
		return nil, usageError{err}
	}
	l, err := listen(f.listen, "--listen")
	if err != nil {
		return nil, err
	}
	h.closer(closeListener(l))
	for _, r := range vs.runners {
		h.loop(r)
	}
	h.serve(func(ctx context.Context) error { return srv.Serve(ctx, l) })
	h.check(ingress.Check{Name: "ingress", Check: func(context.Context) error { return srv.Ready() }})
	h.grace = max(h.grace, f.drainDelay+f.shutdownTimeout+shutdownMargin)
	return &runningIngress{srv: srv, batcher: b, l: l}, nil
}

// shutdownMargin is what a shutdown may take beyond the timeouts it was
// given: closing the queue and its files.
const shutdownMargin = time.Second
