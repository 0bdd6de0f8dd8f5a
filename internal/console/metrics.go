package console

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// maxScrapeBytes bounds one /metrics answer: hookbridge's are a few
// kilobytes; a misdirected URL must not fill memory.
const maxScrapeBytes = 8 << 20

// counterSpec is a counter whose rate the overview shows, split by label.
type counterSpec struct {
	metric, label, title string
}

var counters = []counterSpec{
	{"hookbridge_ingress_events_enqueued_total", "", "events enqueued"},
	{"hookbridge_ingress_requests_total", "outcome", "ingress requests"},
	{"hookbridge_worker_deliveries_total", "outcome", "worker deliveries"},
	{"hookbridge_queue_dead_lettered_total", "reason", "dead-lettered by the queue"},
	{"hookbridge_servicebus_dead_lettered_on_arrival_total", "reason", "dead-lettered on arrival"},
}

// histogramSpec is a histogram whose recent quantiles the overview shows.
type histogramSpec struct {
	metric, title string
}

var histograms = []histogramSpec{
	{"hookbridge_end_to_end_latency_seconds", "end-to-end latency"},
	{"hookbridge_worker_delivery_duration_seconds", "delivery duration"},
	{"hookbridge_enqueue_duration_seconds", "enqueue wait"},
}

// scraper reads the Prometheus text format from hookbridge admin listeners
// at an interval and keeps the last two scrapes of each, for rates.
type scraper struct {
	urls     []string
	client   *http.Client
	interval time.Duration
	now      func() time.Time

	mu   sync.Mutex
	last map[string]scrape
	prev map[string]scrape
}

type scrape struct {
	at       time.Time
	err      error
	families map[string]*dto.MetricFamily
}

func newScraper(urls []string, interval time.Duration) *scraper {
	return &scraper{
		urls: urls, interval: interval, now: time.Now,
		client: &http.Client{
			Timeout: min(interval, 5*time.Second),
			// A metrics URL is an admin listener: a redirect is a mistake.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		last: map[string]scrape{}, prev: map[string]scrape{},
	}
}

// run scrapes every source at once, then at each interval, until ctx ends.
func (s *scraper) run(ctx context.Context) {
	t := time.NewTicker(s.interval)
	defer t.Stop()
	for {
		s.scrapeAll(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (s *scraper) scrapeAll(ctx context.Context) {
	var wg sync.WaitGroup
	for _, u := range s.urls {
		wg.Go(func() {
			sc := s.scrapeOne(ctx, u)
			s.mu.Lock()
			if old, ok := s.last[u]; ok && old.err == nil {
				s.prev[u] = old
			}
			s.last[u] = sc
			s.mu.Unlock()
		})
	}
	wg.Wait()
}

func (s *scraper) scrapeOne(ctx context.Context, u string) scrape {
	sc := scrape{at: s.now()}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		sc.err = fmt.Errorf("metrics URL %q: %w", u, err)
		return sc
	}
	req.Header.Set("Accept", "text/plain;version=0.0.4")
	resp, err := s.client.Do(req)
	if err != nil {
		sc.err = fmt.Errorf("scrape: %w", err)
		return sc
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		sc.err = fmt.Errorf("scrape: %s answered %s; give the admin listener's /metrics URL", u, resp.Status)
		return sc
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(io.LimitReader(resp.Body, maxScrapeBytes))
	if err != nil {
		sc.err = fmt.Errorf("scrape: %s is not Prometheus text format: %w", u, err)
		return sc
	}
	sc.families = fams
	return sc
}

// RedactedURL is raw with the password of its user part, if any, replaced
// by "xxxxx", for showing and logging a --metrics-from URL.
func RedactedURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		return raw
	}
	return u.Redacted()
}

// SourceRates is what the overview shows of one metrics source.
type SourceRates struct {
	URL string
	// Err is the last scrape's failure, "" when it worked.
	Err string
	// Window is the time between the two scrapes the rates come from; zero
	// until there are two.
	Window    time.Duration
	Rates     []Rate
	Latencies []Latency
}

// Rate is a counter's increase per second over the window.
type Rate struct {
	Title, Label string
	PerSecond    float64
	Total        float64
}

// Latency is a histogram's quantiles over the window.
type Latency struct {
	Title    string
	Count    float64
	P50, P99 float64 // seconds; NaN when nothing was observed
}

// rates computes each source's rates from its last two scrapes.
func (s *scraper) rates() []SourceRates {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]SourceRates, 0, len(s.urls))
	for _, u := range s.urls {
		sr := SourceRates{URL: RedactedURL(u)}
		last, ok := s.last[u]
		if !ok {
			sr.Err = "not scraped yet"
			out = append(out, sr)
			continue
		}
		if last.err != nil {
			sr.Err = last.err.Error()
			out = append(out, sr)
			continue
		}
		prev, ok := s.prev[u]
		if ok {
			sr.Window = last.at.Sub(prev.at)
		}
		for _, c := range counters {
			cur := counterValues(last.families[c.metric], c.label)
			var before map[string]float64
			if ok {
				before = counterValues(prev.families[c.metric], c.label)
			}
			for _, label := range sortedKeys(cur) {
				r := Rate{Title: c.title, Label: label, Total: cur[label], PerSecond: math.NaN()}
				if sr.Window > 0 {
					inc := cur[label] - before[label]
					if inc < 0 { // the process restarted: its counter too
						inc = cur[label]
					}
					r.PerSecond = inc / sr.Window.Seconds()
				}
				sr.Rates = append(sr.Rates, r)
			}
		}
		if ok {
			for _, h := range histograms {
				if l, found := latency(h, last.families[h.metric], prev.families[h.metric]); found {
					sr.Latencies = append(sr.Latencies, l)
				}
			}
		}
		out = append(out, sr)
	}
	return out
}

// counterValues sums a counter family's series by one label's value ("" for
// all series together when label is "").
func counterValues(f *dto.MetricFamily, label string) map[string]float64 {
	out := map[string]float64{}
	if f == nil {
		return out
	}
	for _, m := range f.GetMetric() {
		v := m.GetCounter().GetValue()
		if f.GetType() == dto.MetricType_UNTYPED {
			v = m.GetUntyped().GetValue()
		}
		key := ""
		for _, lp := range m.GetLabel() {
			if lp.GetName() == label {
				key = lp.GetValue()
			}
		}
		out[key] += v
	}
	return out
}

func sortedKeys(m map[string]float64) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// latency computes p50 and p99 of what a histogram observed between two
// scrapes, from the increase of its cumulative buckets (all series summed),
// interpolating linearly within a bucket as Prometheus's
// histogram_quantile does.
func latency(h histogramSpec, cur, prev *dto.MetricFamily) (Latency, bool) {
	if cur == nil {
		return Latency{}, false
	}
	now, count := bucketSums(cur)
	before, countBefore := bucketSums(prev)
	if count < countBefore { // restarted
		before, countBefore = nil, 0
	}
	type bucket struct{ le, n float64 }
	var bs []bucket
	for le, n := range now {
		bs = append(bs, bucket{le, n - before[le]})
	}
	slices.SortFunc(bs, func(a, b bucket) int { return cmp.Compare(a.le, b.le) })
	l := Latency{Title: h.title, Count: count - countBefore, P50: math.NaN(), P99: math.NaN()}
	if l.Count <= 0 || len(bs) == 0 {
		return l, true
	}
	quantile := func(q float64) float64 {
		rank := q * l.Count
		lower, below := 0.0, 0.0
		for _, b := range bs {
			if b.n >= rank {
				if math.IsInf(b.le, 1) {
					return lower // beyond the last bound: its lower edge is all we know
				}
				if b.n == below {
					return b.le
				}
				return lower + (b.le-lower)*(rank-below)/(b.n-below)
			}
			lower, below = b.le, b.n
		}
		return lower
	}
	l.P50, l.P99 = quantile(0.5), quantile(0.99)
	return l, true
}

// bucketSums adds a histogram family's series: cumulative count per upper
// bound (+Inf included) and the total count.
func bucketSums(f *dto.MetricFamily) (map[float64]float64, float64) {
	out := map[float64]float64{}
	total := 0.0
	if f == nil {
		return out, 0
	}
	for _, m := range f.GetMetric() {
		h := m.GetHistogram()
		for _, b := range h.GetBucket() {
			out[b.GetUpperBound()] += float64(b.GetCumulativeCount())
		}
		out[math.Inf(1)] += float64(h.GetSampleCount())
		total += float64(h.GetSampleCount())
	}
	return out, total
}
