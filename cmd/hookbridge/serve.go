package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// listen binds addr, explaining the usual failures.
func listen(addr, flag string) (net.Listener, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w (is another process using the port? choose another address with %s)", flag, addr, err, flag)
	}
	return l, nil
}

// closeListener closes l unless its server closed it already.
func closeListener(l net.Listener) func() error {
	return func() error {
		if err := l.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			return err
		}
		return nil
	}
}

// serveAdmin serves the admin handler on l until ctx ends.
func serveAdmin(ctx context.Context, l net.Listener, h http.Handler, log *slog.Logger) error {
	return serveUntil(ctx, "admin listener", l, &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}, 5*time.Second)
}

// serveUntil serves hs on l until ctx ends, then shuts it down, letting
// requests in progress finish for up to grace.
func serveUntil(ctx context.Context, name string, l net.Listener, hs *http.Server, grace time.Duration) error {
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(l) }()
	select {
	case err := <-errc:
		return fmt.Errorf("%s %s: %w", name, l.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	err := hs.Shutdown(sctx)
	if serr := <-errc; serr != nil && !errors.Is(serr, http.ErrServerClosed) {
		return serr
	}
	return err
}
