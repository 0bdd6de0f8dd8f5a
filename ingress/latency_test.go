package ingress_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hookbridge/hookbridge/consumer"
	"github.com/hookbridge/hookbridge/ingress"
	"github.com/hookbridge/hookbridge/internal/testrun"
	"github.com/hookbridge/hookbridge/relay"
	"github.com/hookbridge/hookbridge/relay/sqlite"
	"github.com/hookbridge/hookbridge/schemas"
)

// latencies collects durations from many goroutines.
type latencies struct {
	mu sync.Mutex
	d  []time.Duration
}

func (l *latencies) add(d time.Duration) {
	l.mu.Lock()
	l.d = append(l.d, d)
	l.mu.Unlock()
}

// report adds p50, p99 and p99.9 in milliseconds to the benchmark output.
func (l *latencies) report(b *testing.B, name string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.d) == 0 {
		b.Fatalf("no %s samples", name)
	}
	slices.Sort(l.d)
	q := func(p float64) float64 {
		return float64(l.d[min(len(l.d)-1, int(p*float64(len(l.d))))].Microseconds()) / 1000
	}
	b.ReportMetric(q(0.50), name+"-p50-ms")
	b.ReportMetric(q(0.99), name+"-p99-ms")
	b.ReportMetric(q(0.999), name+"-p99.9-ms")
}

// timedPublisher measures the durable enqueue: Publish, from handing the
// messages to group commit until the commit holding them is durable.
type timedPublisher struct {
	next ingress.Publisher
	lat  *latencies
}

func (p *timedPublisher) Publish(ctx context.Context, msgs []relay.Message) error {
	start := time.Now()
	err := p.next.Publish(ctx, msgs)
	if p.lat != nil {
		p.lat.add(time.Since(start))
	}
	return err
}

// openLoop calls fire at rate per second for d, each call in its own
// goroutine whatever the earlier ones are doing (an open-loop load, as
// independent senders produce), and waits for all calls to end.
func openLoop(rate float64, d time.Duration, fire func()) {
	var wg sync.WaitGroup
	start := time.Now()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	sent := 0
	for now := range tick.C {
		elapsed := now.Sub(start)
		if elapsed >= d {
			break
		}
		for due := int(rate * elapsed.Seconds()); sent < due; sent++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				fire()
			}()
		}
	}
	wg.Wait()
}

// durableStack is the ingress with group commit into a SQLite queue.
type durableStack struct {
	handler http.Handler
	queue   *sqlite.Queue
	pub     *timedPublisher
	toks    []string
	seq     atomic.Int64
	// refused counts requests answered 503 because too many were in
	// progress: an offered rate above what the machine can take (a busy CI
	// machine) is refused by design, and reported rather than failed.
	refused atomic.Int64
}

func newDurableStack(b *testing.B) *durableStack {
	iss := newIssuer(b)
	acs := newACS(b, iss, ingress.ACSConfig{}, true)
	q := benchQueue(b)
	batcher, err := relay.NewBatcher(q, relay.BatchConfig{MaxInFlight: 2, Linger: benchLinger}, nil)
	if err != nil {
		b.Fatal(err)
	}
	go batcher.Run(context.Background())
	b.Cleanup(batcher.Close)
	st := &durableStack{queue: q, pub: &timedPublisher{next: batcher}, toks: benchTokens(b, iss, 512)}
	s, err := ingress.New(ingress.Config{Publisher: st.pub, ACSVerifiers: []ingress.Verifier{acs}, ReplayCacheSize: benchReplayOff})
	if err != nil {
		b.Fatal(err)
	}
	st.handler = s.Handler()
	return st
}

// request sends one signed callback of a call (one of 64) to the handler.
func (st *durableStack) request(b *testing.B) time.Duration {
	i := st.seq.Add(1)
	body := strings.Replace(strings.Replace(callConnected, "evt-1", fmt.Sprintf("evt-%d", i), 1), "corr-1", fmt.Sprintf("call-%d", i%64), 1)
	req := httptest.NewRequest(http.MethodPost, "/acs/callbacks", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+st.toks[i%int64(len(st.toks))])
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	start := time.Now()
	st.handler.ServeHTTP(rec, req)
	switch {
	case rec.Code == http.StatusServiceUnavailable && strings.Contains(rec.Body.String(), "too many requests in progress"):
		st.refused.Add(1)
	case rec.Code != http.StatusOK:
		b.Errorf("status %d: %s", rec.Code, rec.Body.String())
	}
	return time.Since(start)
}

// peak measures the stack's throughput with 128 closed-loop senders.
func (st *durableStack) peak(b *testing.B, d time.Duration) float64 {
	var n atomic.Int64
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	for range 128 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				st.request(b)
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	return float64(n.Load()) / d.Seconds()
}

// BenchmarkEnqueueLatencyHalfLoad measures the added latency of the durable
// enqueue (group commit into SQLite, fsync included) at half of the
// ingress's peak throughput: first the peak with closed-loop senders, then an
// open-loop load at half that rate. Run it with -benchtime 1x; it reports
// the peak, and enqueue and whole-request latency percentiles. Target:
// enqueue p99 < 10ms.
func BenchmarkEnqueueLatencyHalfLoad(b *testing.B) {
	st := newDurableStack(b)
	peak := st.peak(b, 3*time.Second)
	enqueue, request := &latencies{}, &latencies{}
	st.pub.lat = enqueue
	b.ResetTimer()
	for range b.N {
		openLoop(peak/2, 5*time.Second, func() { request.add(st.request(b)) })
	}
	b.StopTimer()
	b.ReportMetric(peak, "peak-req/s")
	b.ReportMetric(peak/2, "offered-req/s")
	b.ReportMetric(float64(st.refused.Load()), "refused-overloaded")
	enqueue.report(b, "enqueue")
	request.report(b, "request")
}

// BenchmarkEndToEndLatency measures, at a moderate open-loop load, the time
// from the ingress accepting a signed callback (its hookbridgereceived
// stamp) to a worker on the same SQLite queue delivering the event to a Go
// handler. Run it with -benchtime 1x. Target: p99 < 50ms.
func BenchmarkEndToEndLatency(b *testing.B) {
	for _, rate := range []float64{500, 2000} {
		b.Run(fmt.Sprintf("rate=%.0f", rate), func(b *testing.B) {
			st := newDurableStack(b)
			e2e := &latencies{}
			w, err := consumer.New(st.queue, consumer.HandlerFunc(func(_ context.Context, e *schemas.Event) error {
				e2e.add(time.Since(e.Received))
				return nil
			}), consumer.Config{Concurrency: 16})
			if err != nil {
				b.Fatal(err)
			}
			stop := testrun.Start(b, w.Run)
			b.ResetTimer()
			for range b.N {
				openLoop(rate, 5*time.Second, func() { st.request(b) })
			}
			// Let the worker drain what is still queued.
			deadline := time.Now().Add(10 * time.Second)
			for time.Now().Before(deadline) {
				if n, _, _ := st.queue.Counts(context.Background()); n == 0 {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			b.StopTimer()
			stop()
			b.ReportMetric(rate, "offered-req/s")
			b.ReportMetric(float64(st.refused.Load()), "refused-overloaded")
			e2e.report(b, "e2e")
		})
	}
}
