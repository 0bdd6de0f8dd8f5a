// Package metrictest reads instruments back from a Prometheus registry in
// tests: the value of a counter or gauge, or how many observations a
// histogram took, over the series whose labels match.
//
//	if n := metrictest.Value(t, reg, "hookbridge_worker_deliveries_total", "outcome", "completed"); n != 1 { ... }
package metrictest

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Value sums the counters, gauges and untyped values named name whose
// labels include every given pair (name, value, name, value, ...); with no
// pairs, every series of name counts. It fails the test if g has no
// instrument of that name.
func Value(t testing.TB, g prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	ms, found := gather(t, g, name, labels)
	if !found {
		t.Fatalf("metrictest: no metric %s is registered", name)
	}
	var sum float64
	for _, m := range ms {
		sum += m.GetCounter().GetValue() + m.GetGauge().GetValue() + m.GetUntyped().GetValue()
	}
	return sum
}

// SampleCount sums the observations of the histograms and summaries named
// name whose labels include every given pair. A histogram vector that has
// observed nothing exports no series: SampleCount is then 0.
func SampleCount(t testing.TB, g prometheus.Gatherer, name string, labels ...string) uint64 {
	t.Helper()
	ms, _ := gather(t, g, name, labels)
	var n uint64
	for _, m := range ms {
		n += m.GetHistogram().GetSampleCount() + m.GetSummary().GetSampleCount()
	}
	return n
}

// SampleSum sums the observed values of the histograms and summaries named
// name whose labels include every given pair; 0 when none observed any.
func SampleSum(t testing.TB, g prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	ms, _ := gather(t, g, name, labels)
	var sum float64
	for _, m := range ms {
		sum += m.GetHistogram().GetSampleSum() + m.GetSummary().GetSampleSum()
	}
	return sum
}

// gather returns the series of name whose labels include labels, and
// whether g exported name at all.
func gather(t testing.TB, g prometheus.Gatherer, name string, labels []string) ([]*dto.Metric, bool) {
	t.Helper()
	if len(labels)%2 != 0 {
		t.Fatalf("metrictest: labels %q: give name and value pairs", labels)
	}
	mfs, err := g.Gather()
	if err != nil {
		t.Fatalf("metrictest: gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		var out []*dto.Metric
		for _, m := range mf.GetMetric() {
			if hasLabels(m, labels) {
				out = append(out, m)
			}
		}
		return out, true
	}
	return nil, false
}

func hasLabels(m *dto.Metric, pairs []string) bool {
	for i := 0; i < len(pairs); i += 2 {
		found := false
		for _, l := range m.GetLabel() {
			if l.GetName() == pairs[i] && l.GetValue() == pairs[i+1] {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}
