package spool_test

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hookbridge/hookbridge/internal/cputime"
	"github.com/hookbridge/hookbridge/internal/metrictest"
	"github.com/hookbridge/hookbridge/internal/sbemu"
	"github.com/hookbridge/hookbridge/internal/sbemu/sbemutest"
	"github.com/hookbridge/hookbridge/internal/testrun"
	"github.com/hookbridge/hookbridge/relay"
	"github.com/hookbridge/hookbridge/relay/servicebus"
	"github.com/hookbridge/hookbridge/relay/spool"
	"github.com/hookbridge/hookbridge/relay/sqlite"
)

// emulated is a session-enabled queue with duplicate detection on an
// in-process emulator, opened through the real SDK.
type emulated struct {
	emu  *sbemu.Server
	q    *servicebus.Queue
	name string
}

func openEmulator(tb testing.TB) *emulated {
	tb.Helper()
	emu := sbemutest.NewServer(tb, sbemu.QueueConfig{Name: "events", RequiresSession: true,
		RequiresDuplicateDetection: true, DuplicateDetectionHistoryTimeWindow: 10 * time.Minute, LockDuration: 10 * time.Second}).Server
	q, err := servicebus.Open(context.Background(), servicebus.Config{Queue: "events", ConnectionString: emu.ConnectionString(),
		MaxRetries: 2, RetryDelay: 50 * time.Millisecond, MaxRetryDelay: 200 * time.Millisecond}, nil)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { q.Close() })
	return &emulated{emu: emu, q: q, name: "events"}
}

// session drains session key from the emulator's queue and returns its
// message IDs in order.
func (e *emulated) session(tb testing.TB, key string) []string {
	tb.Helper()
	var out []string
	for _, m := range sbemutest.DrainSession(tb, e.emu, e.name, key) {
		out = append(out, m.MessageID)
	}
	return out
}

// TestForwardThroughEmulator runs the spool in front of the real
// azservicebus SDK: while the emulator refuses connections and then
// throttles, events are spooled; afterwards each call's events are in the
// queue exactly once, in order.
func TestForwardThroughEmulator(t *testing.T) {
	t.Parallel()
	e := openEmulator(t)
	p := &primary{}
	p.set(e.q.SendBatch)
	h := start(t, p, spool.Config{After: 300 * time.Millisecond, SendTimeout: time.Second}, "", 0)
	const calls, perCall = 3, 30
	send := func(i int) {
		var msgs []relay.Message
		for c := range calls {
			msgs = append(msgs, msg(fmt.Sprintf("c%d-%03d", c, i), fmt.Sprintf("call-%d", c)))
		}
		h.mustSend(msgs...)
	}
	for i := range perCall {
		switch i {
		case 5:
			e.emu.RefuseConnections(true)
		case 15:
			e.emu.RefuseConnections(false)
			e.emu.ThrottleSends(true)
		case 25:
			e.emu.ThrottleSends(false)
		}
		send(i)
	}
	h.drained()
	if n := h.spooled("failed") + h.spooled("slow"); n == 0 {
		t.Error("nothing was spooled; the faults did not bite")
	}
	for c := range calls {
		got := e.session(t, fmt.Sprintf("call-%d", c))
		want := make([]string, perCall)
		for i := range want {
			want[i] = fmt.Sprintf("c%d-%03d", c, i)
		}
		if !slices.Equal(got, want) {
			t.Errorf("call-%d in the queue: %v\nwant %v", c, got, want)
		}
	}
}

// BenchmarkGroupCommit measures the spool's cost on the normal path: group
// commit of single-event requests to the emulator, straight to Service Bus
// and through the spool (which sends them straight on), in one run. Each
// run gets a fresh emulator. cpu-ns/op is the process's CPU time (user and
// system, the in-process emulator's included) per request, steadier than
// wall-clock time on a shared machine.
//
//	go test ./relay/spool -run XXX -bench GroupCommit -benchmem -count 6
func BenchmarkGroupCommit(b *testing.B) {
	// calls=0: every request is of its own call; calls=64: requests of 64
	// busy calls, so concurrent commits often share a call and the spool
	// serializes them.
	for _, calls := range []int64{0, 64} {
		for _, mode := range []string{"direct", "spool"} {
			b.Run(fmt.Sprintf("calls=%d/%s", calls, mode), func(b *testing.B) {
				e := openEmulator(b)
				var sender relay.BatchSender = e.q
				if mode == "spool" {
					store, err := sqlite.Open(context.Background(), sqlite.Config{Path: filepath.Join(b.TempDir(), "spool.db")}, nil)
					if err != nil {
						b.Fatal(err)
					}
					defer store.Close()
					reg := prometheus.NewRegistry()
					sp, err := spool.New(e.q, store, spool.Config{Registerer: reg})
					if err != nil {
						b.Fatal(err)
					}
					stop := testrun.Start(b, sp.Run)
					defer stop()
					// A send slower than --spool-after (a machine too busy)
					// is spooled: say so, since it is not the direct path.
					defer func() {
						n := 0.0
						for _, r := range []string{"failed", "slow", "down", "order"} {
							n += metrictest.Value(b, reg, "hookbridge_spool_spooled_total", "reason", r)
						}
						b.ReportMetric(n, "spooled")
					}()
					sender = sp
				}
				bt, err := relay.NewBatcher(sender, relay.BatchConfig{MaxInFlight: 4}, nil)
				if err != nil {
					b.Fatal(err)
				}
				go bt.Run(context.Background())
				defer bt.Close()
				// Connect before timing.
				if err := bt.Publish(context.Background(), []relay.Message{msg("warm-up", "warm-up")}); err != nil {
					b.Fatal(err)
				}
				var seq atomic.Int64
				b.SetParallelism(16)
				cpu := cputime.Process()
				b.ResetTimer()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						n := seq.Add(1)
						key := n
						if calls > 0 {
							key = n % calls
						}
						m := msg(fmt.Sprintf("m-%d", n), fmt.Sprintf("call-%d", key))
						if err := bt.Publish(context.Background(), []relay.Message{m}); err != nil {
							b.Error(err)
							return
						}
					}
				})
				b.StopTimer()
				if cputime.Supported {
					b.ReportMetric(float64((cputime.Process()-cpu).Nanoseconds())/float64(b.N), "cpu-ns/op")
				}
			})
		}
	}
}

// noop is a primary that takes everything at once.
type noop struct{}

func (noop) SendBatch(context.Context, []relay.Message) error { return nil }

// BenchmarkWrapperOverhead isolates the spool's own work on the direct path
// (per-call serialization, routing, the send budget) with a primary that
// costs nothing, against calling that primary directly. Instructions per
// commit, steady on a busy machine: run under callgrind at two -benchtime
// values and divide the difference.
//
//	go test ./relay/spool -run XXX -bench WrapperOverhead -benchmem
//	go test -c ./relay/spool && GODEBUG=asyncpreemptoff=1 valgrind --tool=callgrind \
//	  ./spool.test -test.run XXX -test.bench 'WrapperOverhead/spool/batch=1$' -test.benchtime 100000x
func BenchmarkWrapperOverhead(b *testing.B) {
	store, err := sqlite.Open(context.Background(), sqlite.Config{Path: filepath.Join(b.TempDir(), "spool.db")}, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	sp, err := spool.New(noop{}, store, spool.Config{})
	if err != nil {
		b.Fatal(err)
	}
	// Let Run read the (empty) store, then stop it: the direct path needs
	// nothing of it afterwards, and an idle forwarder's polling would be
	// counted too.
	stop := testrun.Start(b, sp.Run)
	for sp.Ready(context.Background()) != nil {
		time.Sleep(time.Millisecond)
	}
	if err := stop(); err != nil {
		b.Fatal(err)
	}
	for _, size := range []int{1, 16} {
		batch := make([]relay.Message, size)
		for i := range batch {
			batch[i] = msg(fmt.Sprintf("m-%d", i), fmt.Sprintf("call-%d", i))
		}
		for _, tt := range []struct {
			name   string
			sender relay.BatchSender
		}{{"direct", noop{}}, {"spool", sp}} {
			b.Run(fmt.Sprintf("%s/batch=%d", tt.name, size), func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if err := tt.sender.SendBatch(context.Background(), batch); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkDrain measures how fast the forwarder drains a full spool to the
// emulator: b.N events of the given number of calls are spooled while the
// emulator refuses connections, then the timer runs from the moment it
// accepts them again until the spool is empty.
//
//	go test ./relay/spool -run XXX -bench Drain -benchtime 100000x
func BenchmarkDrain(b *testing.B) {
	for _, calls := range []int{3, 100, 1000} {
		b.Run(fmt.Sprintf("calls=%d", calls), func(b *testing.B) {
			e := openEmulator(b)
			store, err := sqlite.Open(context.Background(), sqlite.Config{Path: filepath.Join(b.TempDir(), "spool.db"),
				LockDuration: 15 * time.Second, MaxDeliveryCount: 10000}, nil)
			if err != nil {
				b.Fatal(err)
			}
			defer store.Close()
			sp, err := spool.New(e.q, store, spool.Config{MaxMessages: int64(b.N) + 1, Cooldown: time.Hour,
				RetryMax: 100 * time.Millisecond}) // measure forwarding, not the wait for the next retry
			if err != nil {
				b.Fatal(err)
			}
			stop := testrun.Start(b, sp.Run)
			defer stop()
			e.emu.RefuseConnections(true)
			const chunk = 512
			for start := 0; start < b.N; start += chunk {
				batch := make([]relay.Message, 0, chunk)
				for i := start; i < min(start+chunk, b.N); i++ {
					batch = append(batch, msg(fmt.Sprintf("m-%d", i), fmt.Sprintf("call-%d", i%calls)))
				}
				if err := sp.SendBatch(context.Background(), batch); err != nil {
					b.Fatal(err)
				}
			}
			if st := sp.State(); st.Messages != int64(b.N) {
				b.Fatalf("spooled %d of %d", st.Messages, b.N)
			}
			b.ResetTimer()
			start := time.Now()
			e.emu.RefuseConnections(false)
			for sp.State().Mode != spool.ModeDirect {
				time.Sleep(10 * time.Millisecond)
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
			st, err := e.emu.Stats(e.name)
			if err != nil {
				b.Fatal(err)
			}
			if st.Active != b.N {
				b.Errorf("the queue holds %d of %d events", st.Active, b.N)
			}
		})
	}
}
