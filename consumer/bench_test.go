package consumer_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hookbridge/hookbridge/consumer"
	"github.com/hookbridge/hookbridge/internal/cputime"
	"github.com/hookbridge/hookbridge/internal/sqlitetest"
	"github.com/hookbridge/hookbridge/relay"
	"github.com/hookbridge/hookbridge/relay/relaytest"
	"github.com/hookbridge/hookbridge/relay/sqlite"
	"github.com/hookbridge/hookbridge/schemas"
)

// BenchmarkDeliverHTTP measures the worker's side of one host: events
// already in the embedded queue, claimed, POSTed to a backend over
// loopback, and completed, as `hookbridge worker` runs (its default
// concurrency, a JSON logger at info, metrics on). Each operation is one
// event, from 64 calls at once; cpu-µs/event counts the worker and the
// backend, which share the process.
func BenchmarkDeliverHTTP(b *testing.B) {
	var delivered atomic.Int64
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		delivered.Add(1)
	}))
	defer backend.Close()
	q := sqlitetest.Open(b, sqlite.Config{})
	data := json.RawMessage(`{"callConnectionId":"401f3500-62bd-46b9-8c09-c8ad9ba04d91","serverCallId":"aHR0cHM6Ly9hcGkuZmxpZ2h0cHJveHkuc2t5cGUuY29tL2FwaS92Mi9jcC9jb252LWZyY2UtMDEuY29udi5za3lwZS5jb20vY29udi9yd3pqVlhmS3RVdWl2T2hEdnJHbFFRP2k9MTAmZT02Mzg1MTIwNDU4MDc1ODg1NjM","correlationId":"%s","operationContext":"ctx"}`)
	// Fill the queue before the clock starts, in commits as the ingress
	// makes them.
	const batch = 256
	for i := 0; i < b.N; i += batch {
		msgs := make([]relay.Message, 0, batch)
		for j := i; j < min(i+batch, b.N); j++ {
			key := fmt.Sprintf("call-%d", j%64)
			msgs = append(msgs, relaytest.EventMessage(b, schemas.Event{ID: fmt.Sprintf("evt-%d", j),
				Source: "calling/callConnections/401f3500-62bd-46b9-8c09-c8ad9ba04d91", Type: "Microsoft.Communication.CallConnected",
				Data: json.RawMessage(fmt.Sprintf(string(data), key)), PartitionKey: key, Received: time.Now(),
				Route: schemas.RouteACSCallbacks, Verifier: "acs"}))
		}
		if err := q.SendBatch(context.Background(), msgs); err != nil {
			b.Fatal(err)
		}
	}
	target, err := consumer.NewHTTP(consumer.HTTPConfig{URL: backend.URL})
	if err != nil {
		b.Fatal(err)
	}
	w, err := consumer.New(q, target, consumer.Config{
		Logger:  slog.New(slog.NewJSONHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo})),
		Metrics: consumer.NewMetrics(prometheus.NewRegistry()),
	})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b.ReportAllocs()
	b.ResetTimer()
	cpu := cputime.Process()
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	for delivered.Load() < int64(b.N) {
		time.Sleep(time.Millisecond)
	}
	b.StopTimer()
	if cputime.Supported {
		b.ReportMetric(float64((cputime.Process()-cpu).Microseconds())/float64(b.N), "cpu-µs/event")
	}
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}
