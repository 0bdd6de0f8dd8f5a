package sqlite_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hookbridge/hookbridge/internal/cputime"
	"github.com/hookbridge/hookbridge/internal/sqlitetest"
	"github.com/hookbridge/hookbridge/relay"
	"github.com/hookbridge/hookbridge/relay/sqlite"
)

// benchMessage is about the size of a normalized Call Automation event.
func benchMessage(i int64) relay.Message {
	id := fmt.Sprintf("evt-%012d", i)
	return relay.Message{
		ID:          id,
		SessionID:   fmt.Sprintf("call-%d", i%64),
		Subject:     "Microsoft.Communication.PlayCompleted",
		ContentType: "application/cloudevents+json; charset=utf-8",
		Body:        []byte(`{"specversion":"1.0","id":"` + id + `","source":"calling/callConnections/401f3500-62bd-46b9-8c09-c8ad9ba04d91","type":"Microsoft.Communication.PlayCompleted","data":{"pad":"` + strings.Repeat("x", 600) + `"}}`),
		Properties:  map[string]any{relay.PropType: "Microsoft.Communication.PlayCompleted", relay.PropID: id, relay.PropSource: "calling/callConnections/401f3500"},
	}
}

func openBench(b *testing.B) *sqlite.Queue {
	b.Helper()
	return sqlitetest.Open(b, sqlite.Config{Path: filepath.Join(b.TempDir(), "q.db")})
}

// reportCPU reports the process's CPU time (user and system) per operation
// once the returned function is called: with fsync in the path, wall time
// mostly measures the disk.
func reportCPU(b *testing.B, perOp int) func() {
	start := cputime.Process()
	return func() {
		if cputime.Supported {
			b.ReportMetric(float64((cputime.Process()-start).Nanoseconds())/1e3/float64(b.N*perOp), "cpu-µs/msg")
		}
	}
}

// BenchmarkSendBatch is one durable commit of n messages; events/s is the
// queue's enqueue throughput at that batch size.
func BenchmarkSendBatch(b *testing.B) {
	for _, n := range []int{1, 16, 128} {
		b.Run(fmt.Sprintf("batch=%d", n), func(b *testing.B) {
			q := openBench(b)
			var seq int64
			batch := make([]relay.Message, n)
			b.ResetTimer()
			defer reportCPU(b, n)()
			for range b.N {
				for j := range batch {
					seq++
					batch[j] = benchMessage(seq)
				}
				if err := q.SendBatch(context.Background(), batch); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "events/s")
		})
	}
}

// BenchmarkPublishParallel is enqueue throughput through group commit with
// many concurrent publishers of one event each, as the ingress does.
func BenchmarkPublishParallel(b *testing.B) {
	q := openBench(b)
	batcher, err := relay.NewBatcher(q, relay.BatchConfig{MaxInFlight: 2}, nil)
	if err != nil {
		b.Fatal(err)
	}
	go batcher.Run(context.Background())
	defer batcher.Close()
	var seq atomic.Int64
	b.SetParallelism(64)
	b.ResetTimer()
	defer reportCPU(b, 1)()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := batcher.Publish(context.Background(), []relay.Message{benchMessage(seq.Add(1))}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkReceiveComplete drains a pre-filled queue of 64 sessions the way
// a worker does: receivers take up to n messages at a time and complete
// each; "workers=8,n=1" is eight concurrent receivers taking one message
// per free slot, the worker's shape under load.
func BenchmarkReceiveComplete(b *testing.B) {
	for _, tc := range []struct{ workers, n int }{{1, 32}, {8, 1}} {
		b.Run(fmt.Sprintf("workers=%d,n=%d", tc.workers, tc.n), func(b *testing.B) {
			q := openBench(b)
			var batch []relay.Message
			for i := range int64(b.N) {
				batch = append(batch, benchMessage(i))
				if len(batch) == 256 || i == int64(b.N)-1 {
					if err := q.SendBatch(context.Background(), batch); err != nil {
						b.Fatal(err)
					}
					batch = batch[:0]
				}
			}
			var done atomic.Int64
			var wg sync.WaitGroup
			b.ResetTimer()
			stop := reportCPU(b, 1)
			for range tc.workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for done.Load() < int64(b.N) {
						ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
						msgs, err := q.Receive(ctx, tc.n)
						cancel()
						if err != nil {
							continue
						}
						for _, m := range msgs {
							if err := q.Complete(context.Background(), m); err != nil {
								b.Error(err)
								return
							}
						}
						done.Add(int64(len(msgs)))
					}
				}()
			}
			wg.Wait()
			stop()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
		})
	}
}
