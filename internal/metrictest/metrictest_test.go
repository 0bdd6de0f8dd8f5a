package metrictest_test

import (
	"fmt"
	"runtime"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hookbridge/hookbridge/internal/metrictest"
)

// fatalRecorder is a testing.TB whose Fatalf records the failure and ends
// the goroutine, as testing's does.
type fatalRecorder struct {
	testing.TB
	fatal string
}

func (r *fatalRecorder) Helper() {}
func (r *fatalRecorder) Fatalf(f string, a ...any) {
	r.fatal = fmt.Sprintf(f, a...)
	runtime.Goexit()
}

// call runs fn on a goroutine of its own, as a test body, and returns the
// failure it reported, if any.
func call(t testing.TB, fn func(t testing.TB)) string {
	r := &fatalRecorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(r)
	}()
	<-done
	return r.fatal
}

func registry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "requests_total", Help: "h"}, []string{"route", "cause"})
	requests.WithLabelValues("/acs", "token_reused").Add(2)
	requests.WithLabelValues("/eventgrid", "token_reused").Add(3)
	requests.WithLabelValues("/acs", "").Add(7)
	depth := prometheus.NewGauge(prometheus.GaugeOpts{Name: "depth", Help: "h"})
	depth.Set(4)
	durations := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "duration_seconds", Help: "h"}, []string{"result"})
	durations.WithLabelValues("ok").Observe(1)
	durations.WithLabelValues("ok").Observe(2)
	durations.WithLabelValues("error").Observe(3)
	unobserved := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "unobserved_seconds", Help: "h"}, []string{"result"})
	reg.MustRegister(requests, depth, durations, unobserved)
	return reg
}

func TestValue(t *testing.T) {
	t.Parallel()
	reg := registry()
	for _, tt := range []struct {
		name      string
		metric    string
		labels    []string
		want      float64
		wantFatal string
	}{
		{"every series", "requests_total", nil, 12, ""},
		{"one label", "requests_total", []string{"cause", "token_reused"}, 5, ""},
		{"two labels", "requests_total", []string{"route", "/acs", "cause", "token_reused"}, 2, ""},
		{"empty label value", "requests_total", []string{"cause", ""}, 7, ""},
		{"no series matches", "requests_total", []string{"cause", "overloaded"}, 0, ""},
		{"gauge", "depth", nil, 4, ""},
		{"not registered", "missing_total", nil, 0, "metrictest: no metric missing_total is registered"},
		{"odd labels", "requests_total", []string{"cause"}, 0, `metrictest: labels ["cause"]: give name and value pairs`},
	} {
		var got float64
		fatal := call(t, func(t testing.TB) { got = metrictest.Value(t, reg, tt.metric, tt.labels...) })
		if got != tt.want || fatal != tt.wantFatal {
			t.Errorf("%s: %v, failure %q; want %v, failure %q", tt.name, got, fatal, tt.want, tt.wantFatal)
		}
	}
}

func TestSampleCount(t *testing.T) {
	t.Parallel()
	reg := registry()
	for _, tt := range []struct {
		metric string
		labels []string
		want   uint64
	}{
		{"duration_seconds", nil, 3},
		{"duration_seconds", []string{"result", "ok"}, 2},
		{"duration_seconds", []string{"result", "error"}, 1},
		{"unobserved_seconds", []string{"result", "ok"}, 0},
	} {
		if got := metrictest.SampleCount(t, reg, tt.metric, tt.labels...); got != tt.want {
			t.Errorf("%s%v: %d, want %d", tt.metric, tt.labels, got, tt.want)
		}
	}
}

func TestSampleSum(t *testing.T) {
	t.Parallel()
	reg := registry()
	for _, tt := range []struct {
		metric string
		labels []string
		want   float64
	}{
		{"duration_seconds", nil, 6},
		{"duration_seconds", []string{"result", "ok"}, 3},
		{"duration_seconds", []string{"result", "error"}, 3},
		{"unobserved_seconds", []string{"result", "ok"}, 0},
	} {
		if got := metrictest.SampleSum(t, reg, tt.metric, tt.labels...); got != tt.want {
			t.Errorf("%s%v: %v, want %v", tt.metric, tt.labels, got, tt.want)
		}
	}
}
