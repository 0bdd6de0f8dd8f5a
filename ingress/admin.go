package ingress

import (
	"context"
	"encoding/json"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Check is one readiness condition: nil when ready.
type Check struct {
	Name  string
	Check func(ctx context.Context) error
	// State, when set, describes the component for /readyz's "state"
	// object, ready or not (e.g. the spool's depth while Service Bus fails).
	State func() any
}

// AdminHandler serves the private admin listener: /healthz (the process is
// alive), /readyz (every check passes: signing keys loaded, queue reachable,
// not shutting down) and /metrics (Prometheus, from g).
func AdminHandler(g prometheus.Gatherer, checks ...Check) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		failed := map[string]string{}
		state := map[string]any{}
		for _, c := range checks {
			if err := c.Check(ctx); err != nil {
				failed[c.Name] = err.Error()
			}
			if c.State != nil {
				state[c.Name] = c.State()
			}
		}
		body := map[string]any{"ready": len(failed) == 0}
		if len(failed) > 0 {
			body["failed"] = failed
		}
		if len(state) > 0 {
			body["state"] = state
		}
		w.Header().Set("Content-Type", "application/json")
		if len(failed) > 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		json.NewEncoder(w).Encode(body)
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	return mux
}
