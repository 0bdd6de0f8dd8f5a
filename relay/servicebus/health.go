package servicebus

import (
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hookbridge/hookbridge/relay"
)

// health tracks one background loop: since when it has been failing
// without a success in between, and with what.
type health struct {
	mu      sync.Mutex
	since   time.Time // zero: healthy
	lastErr error
}

func (h *health) ok() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.since, h.lastErr = time.Time{}, nil
}

func (h *health) fail(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.since.IsZero() {
		h.since = time.Now()
	}
	h.lastErr = err
}

// check returns an error once the loop has been failing for longer than
// limit.
func (h *health) check(what string, limit time.Duration) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.since.IsZero() {
		return nil
	}
	if d := time.Since(h.since); d > limit {
		return fmt.Errorf("%w: servicebus: %s has been failing for %s: %w", relay.ErrUnavailable, what, d.Round(10*time.Millisecond), h.lastErr)
	}
	return nil
}

// metrics are the backend's own instruments: what it does that no consumer
// sees.
type metrics struct {
	deadLetteredOnArrival *prometheus.CounterVec
	deadLetteredUnsent    *prometheus.CounterVec
}

func newMetrics() *metrics {
	return &metrics{
		deadLetteredOnArrival: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hookbridge_servicebus_dead_lettered_on_arrival_total",
			Help: "Messages the ingress marked for the dead-letter queue (a signed but malformed event) that the worker's Service Bus receiver dead-lettered on arrival, by reason.",
		}, []string{"reason"}),
		deadLetteredUnsent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hookbridge_servicebus_dead_lettered_unsent_total",
			Help: "Messages received on the last delivery the queue allows that a stopping worker never got, dead-lettered by the Service Bus receiver (giving them back would have had Service Bus dead-letter them unseen), by reason.",
		}, []string{"reason"}),
	}
}

// Collector returns the queue's Prometheus instruments, for the command to
// register: hookbridge_servicebus_dead_lettered_on_arrival_total{reason} and
// hookbridge_servicebus_dead_lettered_unsent_total{reason}.
func (q *Queue) Collector() prometheus.Collector {
	return collectors{q.metrics.deadLetteredOnArrival, q.metrics.deadLetteredUnsent}
}

// collectors is several collectors as one.
type collectors []prometheus.Collector

func (cs collectors) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range cs {
		c.Describe(ch)
	}
}

func (cs collectors) Collect(ch chan<- prometheus.Metric) {
	for _, c := range cs {
		c.Collect(ch)
	}
}
