package ingress

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	enqueued *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hookbridge_ingress_requests_total",
			Help: "Requests by route, outcome (accepted; handshake: Event Grid validation, abuse protection or deletion notice; rejected: 4xx; failed: 5xx and 429) and cause.",
		}, []string{"route", "outcome", "cause"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "hookbridge_ingress_request_duration_seconds",
			Help:    "Request duration by route, from routing to response.",
			Buckets: []float64{.0005, .001, .002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"route"}),
		enqueued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hookbridge_ingress_events_enqueued_total",
			Help: "Events durably enqueued, by route.",
		}, []string{"route"}),
	}
	if reg != nil {
		reg.MustRegister(m.requests, m.duration, m.enqueued)
	}
	return m
}
