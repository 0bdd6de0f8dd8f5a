package sqlite

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the embedded queue's instruments. A nil *Metrics records
// nothing.
type Metrics struct {
	deadLettered      *prometheus.CounterVec
	duplicates        prometheus.Counter
	walBytes          prometheus.Gauge
	checkpoints       *prometheus.CounterVec
	checkpointSeconds *prometheus.HistogramVec
	fsyncSeconds      prometheus.Histogram
	lockWait          [writers]prometheus.Observer
}

// writer is who waits for the write lock, the label of
// hookbridge_queue_lock_wait_seconds.
type writer int

const (
	writerSend       writer = iota // group commits of sends
	writerReceive                  // claims, settlements, dead-letter queue operations
	writerBackground               // checkpoints' restarts, pruning, readiness probes
	writers
)

var writerNames = [writers]string{"send", "receive", "background"}

// diskBuckets span a fast SSD's flush (0.1ms) to a stalled disk's (over a
// second), with bounds at 0.5, 1, 2 and 5 ms for the latency targets.
var diskBuckets = []float64{.0001, .00025, .0005, .001, .002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}

// lockBuckets span an uncontended lock (10µs) to a busy timeout's worth.
var lockBuckets = []float64{.00001, .000025, .00005, .0001, .00025, .0005, .001, .002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}

// NewMetrics creates the instruments and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		deadLettered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hookbridge_queue_dead_lettered_total",
			Help: "Messages the embedded queue moved to its dead-letter queue itself, by reason: MaxDeliveryCountExceeded (a lock expired on the last delivery) or the reason a sender set (MalformedEvent).",
		}, []string{"reason"}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hookbridge_queue_duplicates_dropped_total",
			Help: "Messages dropped because their MessageID was seen within the duplicate-detection window.",
		}),
		walBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hookbridge_queue_wal_bytes",
			Help: "Size of the embedded queue's write-ahead log file.",
		}),
		checkpoints: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hookbridge_queue_checkpoints_total",
			Help: "Checkpoints of the write-ahead log into the database, by mode (passive, restart) and result (ok, error).",
		}, []string{"mode", "result"}),
		checkpointSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "hookbridge_queue_checkpoint_duration_seconds",
			Help:    "Duration of checkpoints of the write-ahead log, by mode: passive ones run beside commits; a restart holds every process's commits off while it runs (its wait for the lock is not counted).",
			Buckets: diskBuckets,
		}, []string{"mode"}),
		fsyncSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "hookbridge_queue_fsync_duration_seconds",
			Help:    "Duration of each fsync of the write-ahead log that commits wait for before they are acknowledged (one covers every commit written before it; readiness probes' writes wait for them too): the disk's share of the commit latency.",
			Buckets: diskBuckets,
		}),
	}
	lockWait := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "hookbridge_queue_lock_wait_seconds",
		Help:    "Time each write transaction waited for the queue's write lock (until it got it, or gave up after busy_timeout), behind this process's other writers and every other process on the file, by writer: send (commits of sends), receive (claims and settlements), background (restarting checkpoints, pruning, readiness probes).",
		Buckets: lockBuckets,
	}, []string{"writer"})
	for w, name := range writerNames {
		m.lockWait[w] = lockWait.WithLabelValues(name)
	}
	reg.MustRegister(m.deadLettered, m.duplicates, m.walBytes, m.checkpoints, m.checkpointSeconds, m.fsyncSeconds, lockWait)
	return m
}

func (m *Metrics) deadLetter(reason string, n int) {
	if m != nil && n > 0 {
		m.deadLettered.WithLabelValues(reason).Add(float64(n))
	}
}

func (m *Metrics) duplicate(n int) {
	if m != nil && n > 0 {
		m.duplicates.Add(float64(n))
	}
}

func (m *Metrics) wal(size int64) {
	if m != nil {
		m.walBytes.Set(float64(size))
	}
}

// checkpoint counts a checkpoint by mode and outcome, and records how long
// it ran; took is 0 for one that never ran (its lock was not to be had).
func (m *Metrics) checkpoint(mode string, took time.Duration, err error) {
	if m == nil {
		return
	}
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.checkpoints.WithLabelValues(mode, result).Inc()
	if took > 0 {
		m.checkpointSeconds.WithLabelValues(mode).Observe(took.Seconds())
	}
}

// waited records how long a writer waited for the write lock.
func (m *Metrics) waited(w writer, took time.Duration) {
	if m != nil {
		m.lockWait[w].Observe(took.Seconds())
	}
}

// fsync records one fsync of the write-ahead log.
func (m *Metrics) fsync(took time.Duration) {
	if m != nil {
		m.fsyncSeconds.Observe(took.Seconds())
	}
}
