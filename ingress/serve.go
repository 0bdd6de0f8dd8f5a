package ingress

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// Serve serves on l until ctx ends, then drains so that a rolling restart
// refuses nothing:
//
//  1. readiness fails at once (Ready), and each response closes its
//     connection (Connection: close) so clients reconnect through the load
//     balancer, while the listener keeps serving for DrainDelay: load
//     balancers polling readiness stop sending meanwhile. Idle keep-alive
//     connections are left open until then: closing one under a client
//     that is just sending on it would fail that request;
//  2. the listener closes and Serve waits up to ShutdownTimeout for the
//     requests in progress, each of which waits for its queue commit;
//  3. Serve returns. The caller closes the admin listener only then, so
//     readiness stays observable (and failing) throughout.
//
// The cause of the shutdown (context.Cause of ctx, e.g. the signal) is
// logged.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	hs := &http.Server{
		Handler:           s.echo,
		ReadHeaderTimeout: s.cfg.ReadHeaderTimeout,
		ReadTimeout:       s.cfg.ReadTimeout,
		WriteTimeout:      s.cfg.WriteTimeout,
		IdleTimeout:       s.cfg.IdleTimeout,
		MaxHeaderBytes:    s.cfg.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(l) }()
	select {
	case err := <-errc:
		return fmt.Errorf("ingress: serve %s: %w", l.Addr(), err)
	case <-ctx.Done():
	}
	s.draining.Store(true) // readiness fails; responses now close their connection
	s.log.Info("ingress draining: readiness fails; the listener keeps serving until load balancers stop sending",
		"cause", context.Cause(ctx).Error(), "drain_delay", s.cfg.DrainDelay, "addr", l.Addr().String())
	if s.cfg.DrainDelay > 0 {
		t := time.NewTimer(s.cfg.DrainDelay)
		select {
		case <-t.C:
		case err := <-errc:
			t.Stop()
			return fmt.Errorf("ingress: serve %s while draining: %w", l.Addr(), err)
		}
	}
	s.log.Info("ingress closing its listener; waiting for requests in progress", "shutdown_timeout", s.cfg.ShutdownTimeout)
	sctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer cancel()
	err := hs.Shutdown(sctx)
	if serr := <-errc; serr != nil && !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("ingress: shutdown: %w (requests still in progress were cut off)", err)
	}
	s.log.Info("ingress stopped serving")
	return nil
}
