package consumer

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hookbridge/hookbridge/schemas"
)

const (
	outcomeCompleted    = "completed"
	outcomeDeadLettered = "dead_lettered"
	outcomeRetried      = "retried"
	outcomeLockLost     = "lock_lost"
	outcomeSettleFailed = "settle_failed"
	outcomeAbandoned    = "abandoned"
)

// Metrics are the worker's instruments. A nil *Metrics records nothing.
type Metrics struct {
	deliveries *prometheus.CounterVec
	duration   prometheus.Histogram
	endToEnd   prometheus.Histogram
}

// NewMetrics creates the instruments and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hookbridge_worker_deliveries_total",
			Help: "Deliveries by outcome: completed, dead_lettered, retried, abandoned (cut off by shutdown), lock_lost, settle_failed.",
		}, []string{"outcome"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "hookbridge_worker_delivery_duration_seconds",
			Help:    "Time from receiving a message to settling it.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
		endToEnd: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "hookbridge_end_to_end_latency_seconds",
			Help:    "Time from the ingress accepting an event to its successful delivery.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
		}),
	}
	for _, o := range []string{outcomeCompleted, outcomeDeadLettered, outcomeRetried, outcomeAbandoned, outcomeLockLost, outcomeSettleFailed} {
		m.deliveries.WithLabelValues(o)
	}
	reg.MustRegister(m.deliveries, m.duration, m.endToEnd)
	return m
}

func (m *Metrics) observe(outcome string, ev *schemas.Event, start time.Time) {
	if m == nil {
		return
	}
	m.deliveries.WithLabelValues(outcome).Inc()
	m.duration.Observe(time.Since(start).Seconds())
	if outcome == outcomeCompleted && ev != nil && !ev.Received.IsZero() {
		m.endToEnd.Observe(time.Since(ev.Received).Seconds())
	}
}
