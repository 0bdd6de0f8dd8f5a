package relay

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the group-commit instruments. A nil *Metrics records nothing.
type Metrics struct {
	publishSeconds *prometheus.HistogramVec
	commitSeconds  *prometheus.HistogramVec
	batchMessages  prometheus.Histogram
	batchBytes     prometheus.Histogram
}

// NewMetrics creates the instruments and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		publishSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "hookbridge_enqueue_duration_seconds",
			Help:    "Time from a request handing its events to the queue until they were durably committed (or the commit failed), by result.",
			Buckets: []float64{.0005, .001, .002, .003, .005, .0075, .01, .015, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"result"}),
		commitSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "hookbridge_queue_commit_duration_seconds",
			Help:    "Duration of one group commit to the queue, by result.",
			Buckets: []float64{.0005, .001, .002, .003, .005, .0075, .01, .015, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"result"}),
		batchMessages: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "hookbridge_queue_commit_messages",
			Help:    "Messages per group commit.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 11),
		}),
		batchBytes: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "hookbridge_queue_commit_bytes",
			Help:    "Bytes per group commit.",
			Buckets: prometheus.ExponentialBuckets(512, 4, 8),
		}),
	}
	reg.MustRegister(m.publishSeconds, m.commitSeconds, m.batchMessages, m.batchBytes)
	return m
}

func result(err error) string {
	if err != nil {
		return "error"
	}
	return "ok"
}

func (m *Metrics) observePublish(d time.Duration, err error) {
	if m == nil {
		return
	}
	m.publishSeconds.WithLabelValues(result(err)).Observe(d.Seconds())
}

func (m *Metrics) observeCommit(n, size int, d time.Duration, err error) {
	if m == nil {
		return
	}
	m.commitSeconds.WithLabelValues(result(err)).Observe(d.Seconds())
	m.batchMessages.Observe(float64(n))
	m.batchBytes.Observe(float64(size))
}
