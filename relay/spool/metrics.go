package spool

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the spool's instruments. A nil *metrics records nothing.
type metrics struct {
	spooledTotal    *prometheus.CounterVec
	refusedTotal    *prometheus.CounterVec
	forwarded       prometheus.Counter
	forwardFailures prometheus.Counter
	deadLettered    prometheus.Counter
}

// newMetrics registers the spool's instruments with reg (nil: none); the
// gauges read s when scraped.
func newMetrics(reg prometheus.Registerer, s *Spool) *metrics {
	m := &metrics{
		spooledTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hookbridge_spool_spooled_total",
			Help: "Events committed to the spool instead of Service Bus, by reason: failed (the send failed), slow (no answer within --spool-after), down (Service Bus failed moments ago), order (the call has events in the spool), restart (the spool held events of unknown calls at start).",
		}, []string{"reason"}),
		refusedTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hookbridge_spool_refused_total",
			Help: "Events the spool could not take (the request got 503), by reason: full or error.",
		}, []string{"reason"}),
		forwarded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hookbridge_spool_forwarded_total",
			Help: "Spooled events forwarded to Service Bus and removed from the spool.",
		}),
		forwardFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hookbridge_spool_forward_failures_total",
			Help: "Forwarding sends to Service Bus that failed (each is retried).",
		}),
		deadLettered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hookbridge_spool_dead_lettered_total",
			Help: "Spooled events Service Bus refused as too large, set aside in the spool's dead-letter queue.",
		}),
	}
	for _, r := range reasonNames {
		m.spooledTotal.WithLabelValues(r)
	}
	for _, r := range []string{"full", "error"} {
		m.refusedTotal.WithLabelValues(r)
	}
	if reg == nil {
		return m
	}
	reg.MustRegister(m.spooledTotal, m.refusedTotal, m.forwarded, m.forwardFailures, m.deadLettered,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "hookbridge_spool_messages",
			Help: "Events in the spool, waiting to be forwarded to Service Bus (an upper bound, corrected while the forwarder idles).",
		}, func() float64 { return float64(s.State().Messages) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "hookbridge_spool_oldest_message_age_seconds",
			Help: "Age of the oldest event the forwarder holds; 0 when the spool is empty.",
		}, func() float64 { return s.State().OldestAgeSeconds }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "hookbridge_spool_primary_failing",
			Help: "1 while Service Bus is failing and new events go straight to the spool, else 0.",
		}, func() float64 {
			if s.State().Mode == ModeSpooling {
				return 1
			}
			return 0
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "hookbridge_spool_store_ready",
			Help: "1 while the spool itself can commit (checked every 10 idle polls), else 0: at 0, events would be refused should Service Bus fail.",
		}, func() float64 {
			if s.State().StoreError != "" {
				return 0
			}
			return 1
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "hookbridge_spool_max_messages",
			Help: "The most events the spool takes (--spool-max-messages).",
		}, func() float64 { return float64(s.cfg.MaxMessages) }),
	)
	return m
}

func (m *metrics) spooled(counts [numReasons]int) {
	for r, n := range counts {
		if n > 0 {
			m.spooledTotal.WithLabelValues(reasonNames[r]).Add(float64(n))
		}
	}
}

func (m *metrics) refused(reason string, n int64) {
	m.refusedTotal.WithLabelValues(reason).Add(float64(n))
}

// Modes of the spool, as State reports them.
const (
	// ModeStarting: Run has not yet read what the store holds; events wait.
	ModeStarting = "starting"
	// ModeDirect: the spool is empty; events go straight to Service Bus.
	ModeDirect = "direct"
	// ModeSpooling: Service Bus is failing; new events go to the spool.
	ModeSpooling = "spooling"
	// ModeForwarding: Service Bus takes sends again and the forwarder is
	// draining the spool; calls with events in it keep going through it.
	ModeForwarding = "forwarding"
)

// State is the spool's condition, for /readyz.
type State struct {
	Mode string `json:"mode"`
	// Messages is how many events the spool holds (an upper bound).
	Messages    int64 `json:"messages"`
	MaxMessages int64 `json:"max_messages"`
	// OldestAgeSeconds is the age of the oldest event the forwarder holds.
	OldestAgeSeconds float64 `json:"oldest_message_age_seconds"`
	// Recovering: the spool held events of unknown calls at start, and
	// every call's events go through it until those are forwarded.
	Recovering bool `json:"recovering,omitempty"`
	// FailingSince is when Service Bus began failing, in ModeSpooling.
	FailingSince *time.Time `json:"failing_since,omitempty"`
	// LastError is Service Bus's latest failure, in ModeSpooling.
	LastError string `json:"last_error,omitempty"`
	// StoreError is why the spool itself could not commit at its latest
	// check, if it could not: it would refuse events should Service Bus
	// fail.
	StoreError string `json:"store_error,omitempty"`
}

// State reports the spool's condition.
func (s *Spool) State() State {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	st := State{Mode: ModeDirect, Messages: s.depth + s.inflight, MaxMessages: s.cfg.MaxMessages, Recovering: s.recovering}
	if s.storeHealth != nil {
		st.StoreError = s.storeHealth.Error()
	}
	if st.Messages > 0 && !s.oldest.IsZero() {
		st.OldestAgeSeconds = now.Sub(s.oldest).Seconds()
	}
	switch {
	case !s.isKnown():
		st.Mode = ModeStarting
	case s.down && (s.spooling || now.Before(s.downUntil)):
		st.Mode = ModeSpooling
		since := s.downSince
		st.FailingSince = &since
		if s.lastErr != nil {
			st.LastError = s.lastErr.Error()
		}
	case s.spooling:
		st.Mode = ModeForwarding
	}
	return st
}

// Ready reports whether the ingress can take events through the spool: nil
// while Service Bus takes sends or the spool has room, so readiness holds
// while spooling. It fails before Run has read the store, once Run has
// stopped, and while Service Bus is failing and the spool is full or its
// last commit failed (for Config.Cooldown after that failure, so that
// readiness comes back for the next request to try again).
func (s *Spool) Ready(context.Context) error {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case !s.running:
		return errors.New("spool: the forwarder is not running")
	case !s.isKnown():
		return errors.New("spool: still reading what the spool holds")
	case !s.down:
		return nil
	case s.depth+s.inflight >= s.cfg.MaxMessages:
		return fmt.Errorf("spool: Service Bus is failing (%v) and the spool is full (%d events)", s.lastErr, s.depth+s.inflight)
	case s.storeErr != nil && now.Before(s.storeErrAt.Add(s.cfg.Cooldown)):
		return fmt.Errorf("spool: Service Bus is failing (%v) and the spool cannot commit either: %w", s.lastErr, s.storeErr)
	}
	return nil
}

func (s *Spool) isKnown() bool {
	select {
	case <-s.known:
		return true
	default:
		return false
	}
}
