package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/errgroup"

	"github.com/hookbridge/hookbridge/ingress"
)

// host is what a long-running command runs, assembled from parts (the
// queue, the ingress, the worker, the development issuer): every part's
// loops in one errgroup, its readiness checks on the private admin
// listener, and its closes, in reverse order of adding, once every loop has
// returned. Each part adds itself with one build function (addQueue,
// buildIngress, buildWorker, ...), so `ingress`, `worker` and `dev` are the
// same parts put together differently.
//
// A serving loop (the public listener, the worker) stops when the
// command's context ends, and may take its time to drain. A background
// loop (the queue's checkpoints, the spool's forwarder, key refreshes) and
// the admin listener serve the serving loops, so they run until the last
// serving loop has returned: events accepted while the listener drains are
// still forwarded, keys still refreshed, and readiness stays observable
// (and failing) to the end.
type host struct {
	log     *slog.Logger
	reg     *prometheus.Registry
	checks  []ingress.Check
	serving []func(ctx context.Context) error
	loops   []func(ctx context.Context) error
	closers []func() error
	// grace is how long a shutdown may take once the command's context
	// ended, before the command gives up on what is left and returns.
	grace time.Duration
	admin net.Listener
	// tp traces the parts; nil when tracing is off (see addTracing).
	tp trace.TracerProvider
	// ran is set once run starts: from then on run closes the parts.
	ran bool
}

func newHost(log *slog.Logger) *host {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return &host{log: log, reg: reg}
}

// serve adds a serving loop, run until the command's context ends.
func (h *host) serve(fn func(ctx context.Context) error) { h.serving = append(h.serving, fn) }

// loop adds a background loop, run until every serving loop has returned.
func (h *host) loop(fn func(ctx context.Context) error) { h.loops = append(h.loops, fn) }

// check adds a readiness check.
func (h *host) check(c ingress.Check) { h.checks = append(h.checks, c) }

// closer adds something to close once every loop has returned.
func (h *host) closer(fn func() error) { h.closers = append(h.closers, fn) }

// close closes what was added, newest first.
func (h *host) close() error {
	var errs []error
	for i := len(h.closers) - 1; i >= 0; i-- {
		errs = append(errs, h.closers[i]())
	}
	h.closers = nil
	return errors.Join(errs...)
}

// closeUnlessRun closes what was added if run was never reached: a command
// defers it once it has a host, so that a part failing to build never
// leaves the parts built before it open.
func (h *host) closeUnlessRun() {
	if !h.ran {
		h.close()
	}
}

// errShutdownTimeout: the parts did not stop within the grace period.
var errShutdownTimeout = errors.New("shutdown did not finish in time")

// listenAdmin binds the private admin listener and returns its address.
func (h *host) listenAdmin(addr string) (string, error) {
	l, err := listen(addr, "--admin-listen")
	if err != nil {
		return "", err
	}
	h.admin = l
	return l.Addr().String(), nil
}

// run serves the admin listener (bound by listenAdmin, if it was) and runs
// every loop until ctx ends or one fails, then closes the parts. Once ctx
// has ended, everything must be done within h.grace; past it run returns
// errShutdownTimeout and leaves the rest to the process's exit.
func (h *host) run(ctx context.Context) error {
	h.ran = true
	g, gctx := errgroup.WithContext(ctx)
	// Background loops end once the serving loops have all returned (which
	// they do only after gctx ends: the command stopped, or a loop failed).
	bgctx, stopBackground := context.WithCancel(context.WithoutCancel(gctx))
	defer stopBackground()
	var serving sync.WaitGroup
	for _, fn := range h.serving {
		serving.Add(1)
		g.Go(func() error {
			defer serving.Done()
			return fn(gctx)
		})
	}
	go func() {
		<-gctx.Done()
		serving.Wait()
		stopBackground()
	}()
	for _, fn := range h.loops {
		g.Go(func() error { return fn(bgctx) })
	}
	if adm := h.admin; adm != nil {
		g.Go(func() error { return serveAdmin(bgctx, adm, ingress.AdminHandler(h.reg, h.checks...), h.log) })
	}

	done := make(chan error, 1)
	go func() {
		err := g.Wait()
		done <- errors.Join(err, h.close())
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	t := time.NewTimer(h.grace)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C:
		h.log.Error("shutdown did not finish in time; exiting with what is left cut off", "grace", h.grace)
		return fmt.Errorf("%w: parts still running after %s", errShutdownTimeout, h.grace)
	}
}
