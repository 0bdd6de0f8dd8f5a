package ingress_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/hookbridge/hookbridge/ingress"
	"github.com/hookbridge/hookbridge/internal/cputime"
	"github.com/hookbridge/hookbridge/internal/devissuer"
	"github.com/hookbridge/hookbridge/internal/sqlitetest"
	"github.com/hookbridge/hookbridge/relay"
	"github.com/hookbridge/hookbridge/relay/sqlite"
)

// benchTokens signs n distinct valid tokens up front: signing is far more
// expensive than verifying and must not be measured. Benchmarks reuse the
// pool with different bodies, which the replay defence refuses, so they turn
// it off (benchReplayOff); BenchmarkReplayGuard measures its cost alone.
const benchReplayOff = -1

func benchTokens(b *testing.B, iss *devissuer.Issuer, n int) []string {
	b.Helper()
	toks := make([]string, n)
	for i := range toks {
		toks[i] = sign(b, iss, claims(iss))
	}
	return toks
}

// BenchmarkACSCallbacks measures POST /acs/callbacks with an RS256 token and
// one event, from many concurrent senders:
//
//   - verify-only: a bare handler that checks the token and reads the body,
//     the baseline (RSA verification is the physical limit);
//   - durable: the real ingress (Echo, verification, parsing, normalizing) and
//     group commit into the SQLite queue with fsync, answering only after the
//     commit.
//
// Compare the two with benchstat; the target is durable ≥ 0.7 × verify-only.
func BenchmarkACSCallbacks(b *testing.B) {
	benchACS(b, func(b *testing.B, toks []string, h http.Handler) {
		postInParallel(b, 64, toks, func(body, tok string) {
			req := httptest.NewRequest(http.MethodPost, "/acs/callbacks", strings.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+tok)
			req.Header.Set("Content-Type", "application/json")
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != http.StatusOK {
				b.Fatalf("status %d: %s", rec.Code, rec.Body.String())
			}
		})
	})
}

// BenchmarkACSCallbacksLoopback is BenchmarkACSCallbacks over real HTTP on
// loopback: a keep-alive client in the same process posts to a listening
// server, so both sides of the HTTP exchange cost what they cost in
// production.
func BenchmarkACSCallbacksLoopback(b *testing.B) {
	benchACS(b, func(b *testing.B, toks []string, h http.Handler) {
		srv := httptest.NewServer(h)
		defer srv.Close()
		client := &http.Client{Transport: &http.Transport{MaxIdleConns: 512, MaxIdleConnsPerHost: 512}}
		defer client.CloseIdleConnections()
		postInParallel(b, 128, toks, func(body, tok string) {
			req, _ := http.NewRequest(http.MethodPost, srv.URL+"/acs/callbacks", strings.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+tok)
			req.Header.Set("Content-Type", "application/json")
			resp, err := client.Do(req)
			if err != nil {
				b.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				b.Fatalf("status %d", resp.StatusCode)
			}
		})
	})
}

// postInParallel posts b.N callbacks from parallelism goroutines per
// processor: each a new event, with the next of toks. post sends one.
func postInParallel(b *testing.B, parallelism int, toks []string, post func(body, tok string)) {
	var seq atomic.Int64
	b.ReportAllocs()
	b.SetParallelism(parallelism)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := seq.Add(1)
			post(strings.Replace(callConnected, "evt-1", fmt.Sprintf("evt-%d", i), 1), toks[i%int64(len(toks))])
		}
	})
}

// benchACS runs fn against the verify-only baseline and the durable
// ingress, in one process so both see the same machine.
func benchACS(b *testing.B, fn func(b *testing.B, toks []string, h http.Handler)) {
	iss := newIssuer(b)
	acs := newACS(b, iss, ingress.ACSConfig{}, true)
	toks := benchTokens(b, iss, 512)

	b.Run("verify-only", func(b *testing.B) {
		stop := reportCPU(b)
		fn(b, toks, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if _, err := acs.Verify(r); err != nil {
				http.Error(w, err.Error(), http.StatusUnauthorized)
				return
			}
			io.Copy(io.Discard, r.Body)
			w.WriteHeader(http.StatusOK)
		}))
		b.StopTimer()
		stop()
	})
	durable := func(b *testing.B, tp trace.TracerProvider) {
		q := benchQueue(b)
		reg := prometheus.NewRegistry()
		batcher, err := relay.NewBatcher(relay.TraceCommits(q, tp, "q.db"), relay.BatchConfig{MaxInFlight: 2, Linger: benchLinger}, relay.NewMetrics(reg))
		if err != nil {
			b.Fatal(err)
		}
		go batcher.Run(context.Background())
		defer batcher.Close()
		s, err := ingress.New(ingress.Config{Publisher: batcher, ACSVerifiers: []ingress.Verifier{acs}, ReplayCacheSize: benchReplayOff,
			TracerProvider: tp, TraceQueue: "q.db"})
		if err != nil {
			b.Fatal(err)
		}
		stop := reportCPU(b)
		fn(b, toks, s.Handler())
		b.StopTimer()
		stop()
		reportCommits(b, reg)
	}
	b.Run("durable", func(b *testing.B) { durable(b, nil) })
	// durable-traced: the same with tracing on, every request sampled,
	// its spans batched to an exporter that drops them.
	b.Run("durable-traced", func(b *testing.B) { durable(b, benchTracerProvider(b)) })
}

// benchTracerProvider is the SDK's tracer provider as hookbridge runs it
// (batched export, every trace sampled) with an exporter that drops the
// spans: the cost of tracing on the request path, without a collector.
func benchTracerProvider(b *testing.B) trace.TracerProvider {
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(tracetest.NewNoopExporter()), sdktrace.WithSampler(sdktrace.AlwaysSample()))
	b.Cleanup(func() { tp.Shutdown(context.Background()) })
	return tp
}

// reportCommits adds the mean group-commit size and duration to the
// benchmark's output.
func reportCommits(b *testing.B, reg *prometheus.Registry) {
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			h := m.GetHistogram()
			if h == nil || h.GetSampleCount() == 0 {
				continue
			}
			mean := h.GetSampleSum() / float64(h.GetSampleCount())
			switch mf.GetName() {
			case "hookbridge_queue_commit_messages":
				b.ReportMetric(mean, "msgs/commit")
			case "hookbridge_queue_commit_duration_seconds":
				b.ReportMetric(mean*1e6, "µs/commit")
			case "hookbridge_enqueue_duration_seconds":
				b.ReportMetric(mean*1e6, "µs/enqueue")
			}
		}
	}
}

// reportCPU reports the process's CPU time (user and system) per operation
// from now until the returned function runs: how much work a request costs,
// whatever the pipelining. Call it where the timer stops, before anything
// closes.
func reportCPU(b *testing.B) func() {
	start := cputime.Process()
	return func() {
		if cputime.Supported {
			b.ReportMetric(float64((cputime.Process()-start).Microseconds())/float64(b.N), "cpu-µs/op")
		}
	}
}

// BenchmarkEventGridReusedToken measures POST /eventgrid (one IncomingCall,
// durable SQLite commit) when, as Event Grid does, every delivery carries
// the same Entra token: with the verified-token cache, and without it (every
// request pays the RSA check).
func BenchmarkEventGridReusedToken(b *testing.B) {
	iss := newIssuer(b)
	body, err := os.ReadFile("../schemas/testdata/eventgrid/IncomingCall.json")
	if err != nil {
		b.Fatal(err)
	}
	tok := entraToken(b, iss, nil)
	for _, tc := range []struct {
		name  string
		cache int
	}{{"cache", 0}, {"no-cache", -1}} {
		b.Run(tc.name, func(b *testing.B) {
			entra := newEntra(b, iss, ingress.EntraConfig{CacheSize: tc.cache}, true)
			q := benchQueue(b)
			reg := prometheus.NewRegistry()
			batcher, err := relay.NewBatcher(q, relay.BatchConfig{MaxInFlight: 2, Linger: benchLinger}, relay.NewMetrics(reg))
			if err != nil {
				b.Fatal(err)
			}
			go batcher.Run(context.Background())
			defer batcher.Close()
			s, err := ingress.New(ingress.Config{Publisher: batcher, EventGridVerifiers: []ingress.Verifier{entra}})
			if err != nil {
				b.Fatal(err)
			}
			h := s.Handler()
			var seq atomic.Int64
			b.SetParallelism(64)
			b.ResetTimer()
			stop := reportCPU(b)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					i := seq.Add(1)
					req := httptest.NewRequest(http.MethodPost, "/eventgrid",
						strings.NewReader(strings.Replace(string(body), "4b7e9a52-1a1c", fmt.Sprintf("%013d", i), 1)))
					req.Header.Set("Authorization", "Bearer "+tok)
					req.Header.Set("Content-Type", "application/json")
					req.Header.Set("aeg-event-type", "Notification")
					rec := httptest.NewRecorder()
					h.ServeHTTP(rec, req)
					if rec.Code != http.StatusOK {
						b.Fatalf("status %d: %s", rec.Code, rec.Body.String())
					}
				}
			})
			b.StopTimer()
			stop()
			reportCommits(b, reg)
		})
	}
}

// benchQueue opens a SQLite queue in the benchmark's temporary directory
// as `hookbridge ingress` runs it, with its background work (the
// checkpoints that keep the write-ahead log short) running, and closes it
// when the benchmark ends. Its CPU belongs in a benchmark's figure only
// while the clock runs: closing folds what is left of the log into the
// database, once, which a running ingress never does per request.
func benchQueue(b *testing.B) *sqlite.Queue {
	return sqlitetest.Open(b, sqlite.Config{Path: filepath.Join(b.TempDir(), "q.db")})
}

// benchLinger is the group commit's linger as `hookbridge ingress` runs it
// by default (--batch-linger).
const benchLinger = 2 * time.Millisecond
