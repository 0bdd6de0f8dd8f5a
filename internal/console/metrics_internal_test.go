package console

import (
	"context"
	"math"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// TestScraperRates scrapes a real Prometheus registry twice, ten seconds
// apart by the scraper's clock, and checks the rates and quantiles.
func TestScraperRates(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	enqueued := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hookbridge_ingress_events_enqueued_total"}, []string{"route"})
	deliveries := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hookbridge_worker_deliveries_total"}, []string{"outcome"})
	e2e := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "hookbridge_end_to_end_latency_seconds",
		Buckets: []float64{0.001, 0.01, 0.1, 1}})
	reg.MustRegister(enqueued, deliveries, e2e)
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer srv.Close()
	down := httptest.NewServer(http.NotFoundHandler())
	defer down.Close()

	s := newScraper([]string{srv.URL, down.URL + "/metrics"}, time.Second)
	now := time.Unix(1_700_000_000, 0)
	s.now = func() time.Time { return now }
	enqueued.WithLabelValues("/acs/callbacks").Add(100)
	deliveries.WithLabelValues("completed").Add(50)
	for range 100 {
		e2e.Observe(0.0005) // before the window: must not count
	}
	s.scrapeAll(context.Background())
	if r := s.rates(); len(r) != 2 || r[0].Window != 0 || !math.IsNaN(r[0].Rates[0].PerSecond) || r[1].Err == "" {
		t.Fatalf("after one scrape: %+v", r)
	}

	now = now.Add(10 * time.Second)
	enqueued.WithLabelValues("/acs/callbacks").Add(150)
	enqueued.WithLabelValues("/eventgrid").Add(50)
	deliveries.WithLabelValues("completed").Add(180)
	deliveries.WithLabelValues("retried").Add(20)
	for i := range 100 {
		if i < 90 {
			e2e.Observe(0.005) // in (0.001, 0.01]
		} else {
			e2e.Observe(0.5) // in (0.1, 1]
		}
	}
	s.scrapeAll(context.Background())
	r := s.rates()[0]
	if r.Err != "" || r.Window != 10*time.Second {
		t.Fatalf("source: %+v", r)
	}
	want := map[string]float64{"events enqueued/": 20, "worker deliveries/completed": 18, "worker deliveries/retried": 2}
	for _, rate := range r.Rates {
		k := rate.Title + "/" + rate.Label
		if w, ok := want[k]; ok {
			if math.Abs(rate.PerSecond-w) > 1e-9 {
				t.Errorf("%s: %v/s, want %v/s", k, rate.PerSecond, w)
			}
			delete(want, k)
		}
	}
	if len(want) > 0 {
		t.Errorf("rates missing: %v (got %+v)", want, r.Rates)
	}
	if len(r.Latencies) != 1 {
		t.Fatalf("latencies: %+v", r.Latencies)
	}
	l := r.Latencies[0]
	// p50: rank 50 of 100, all 90 in (0.001, 0.01]: 0.001 + 0.009*50/90.
	if l.Count != 100 || math.Abs(l.P50-(0.001+0.009*50/90)) > 1e-9 || l.P99 <= 0.1 || l.P99 > 1 {
		t.Errorf("latency: %+v", l)
	}
	if e := s.rates()[1].Err; e == "" {
		t.Error("a source answering 404 shows no error")
	}
}

func TestRedactedURL(t *testing.T) {
	for raw, want := range map[string]string{
		"http://127.0.0.1:9090/metrics":           "http://127.0.0.1:9090/metrics",
		"http://ops:s3cret@10.0.0.5:9090/metrics": "http://ops:xxxxx@10.0.0.5:9090/metrics",
		"http://ops@10.0.0.5:9090/metrics":        "http://ops@10.0.0.5:9090/metrics",
	} {
		if got := RedactedURL(raw); got != want {
			t.Errorf("RedactedURL(%q) = %q, want %q", raw, got, want)
		}
	}
}
