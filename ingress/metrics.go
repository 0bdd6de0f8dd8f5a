package ingress

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	requests        *prometheus.CounterVec
	duration        *prometheus.HistogramVec
	enqueued        *prometheus.CounterVec
	deadLettered    *prometheus.CounterVec
	replayEvictions prometheus.Counter
	reg             prometheus.Registerer

	// byPath holds the series of each served route, resolved once, so the
	// request path does not look labels up (set in New, read-only after).
	byPath map[string]pathMetrics
}

// pathMetrics are the pre-resolved series of one route's common case.
type pathMetrics struct {
	accepted prometheus.Counter  // requests{route, accepted, ""}
	duration prometheus.Observer // request_duration{route}
}

// routeMetrics are the per-route event counters.
type routeMetrics struct {
	enqueued     prometheus.Counter
	deadLettered prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hookbridge_ingress_requests_total",
			Help: "Requests by route, outcome (accepted; handshake: Event Grid validation, abuse protection or deletion notice; rejected: 4xx; failed: 5xx and 429) and cause (on accepted requests: token_reused, malformed_event).",
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
		deadLettered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hookbridge_ingress_events_dead_lettered_total",
			Help: "Events of verified requests that break an envelope rule, stored straight in the dead-letter queue as MalformedEvent, by route.",
		}, []string{"route"}),
		replayEvictions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hookbridge_ingress_replay_evictions_total",
			Help: "Call Automation tokens the replay defence forgot before they expired because its cache (--replay-cache-size) was full; each weakens the defence for that token.",
		}),
		byPath: make(map[string]pathMetrics),
		reg:    reg,
	}
	if reg != nil {
		reg.MustRegister(m.requests, m.duration, m.enqueued, m.deadLettered, m.replayEvictions)
	}
	return m
}

// forRoute resolves the series of a served route.
func (m *metrics) forRoute(path, name string) routeMetrics {
	m.byPath[path] = pathMetrics{
		accepted: m.requests.WithLabelValues(path, outcomeAccepted, ""),
		duration: m.duration.WithLabelValues(path),
	}
	return routeMetrics{enqueued: m.enqueued.WithLabelValues(name), deadLettered: m.deadLettered.WithLabelValues(name)}
}

// observe counts one request and its duration.
func (m *metrics) observe(path, outcome, cause string, d time.Duration) {
	pm, ok := m.byPath[path]
	if !ok {
		m.duration.WithLabelValues(path).Observe(d.Seconds())
		m.requests.WithLabelValues(path, outcome, cause).Inc()
		return
	}
	pm.duration.Observe(d.Seconds())
	if outcome == outcomeAccepted && cause == "" {
		pm.accepted.Inc()
		return
	}
	m.requests.WithLabelValues(path, outcome, cause).Inc()
}

// watchReplay exports how many tokens the replay defence holds.
func (m *metrics) watchReplay(g *replayGuard) {
	if m.reg == nil {
		return
	}
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "hookbridge_ingress_replay_tokens",
		Help: "Call Automation tokens the replay defence holds until they expire (at most --replay-cache-size; about 110 bytes each).",
	}, func() float64 { return float64(g.len()) }))
}
