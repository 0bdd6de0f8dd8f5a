package sqlite_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hookbridge/hookbridge/internal/metrictest"
	"github.com/hookbridge/hookbridge/internal/sqlitetest"
	"github.com/hookbridge/hookbridge/internal/testwait"
	"github.com/hookbridge/hookbridge/relay"
	"github.com/hookbridge/hookbridge/relay/sqlite"
)

// The queue's instruments count what it does: every acknowledged send waits
// for a timed fsync, the background checkpoints are counted and timed by
// mode (a log grown past its bound is restarted), and a message stored
// straight in the dead-letter queue is counted by its reason.
func TestMetrics(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	q := sqlitetest.Open(t, sqlite.Config{Metrics: sqlite.NewMetrics(reg)})
	ctx := context.Background()

	if err := q.SendBatch(ctx, []relay.Message{{ID: "m1", Body: []byte(`{}`)}}); err != nil {
		t.Fatal(err)
	}
	if n := metrictest.SampleCount(t, reg, "hookbridge_queue_fsync_duration_seconds"); n < 1 {
		t.Errorf("fsyncs timed after an acknowledged send: %d, want at least 1", n)
	}

	if err := q.SendBatch(ctx, []relay.Message{{ID: "bad", Body: []byte(`{}`), DeadLetterReason: relay.ReasonMalformedEvent, DeadLetterDescription: "not an event"}}); err != nil {
		t.Fatal(err)
	}
	if n := metrictest.Value(t, reg, "hookbridge_queue_dead_lettered_total", "reason", relay.ReasonMalformedEvent); n != 1 {
		t.Errorf("dead-lettered as %s: %v, want 1", relay.ReasonMalformedEvent, n)
	}

	testwait.Until(t, 10*time.Second, "a timed passive checkpoint, and the log's size", func() bool {
		return metrictest.SampleCount(t, reg, "hookbridge_queue_checkpoint_duration_seconds", "mode", "passive") >= 1 &&
			metrictest.Value(t, reg, "hookbridge_queue_wal_bytes") > 0
	})
	if n := metrictest.Value(t, reg, "hookbridge_queue_checkpoints_total", "mode", "passive", "result", "ok"); n < 1 {
		t.Errorf("passive checkpoints counted: %v, want at least 1", n)
	}

	// Over 4 MiB of frames in one transaction (a checkpoint between two
	// smaller ones would let the log start over): the next checkpoint
	// restarts the log.
	body := []byte(`{"pad":"` + strings.Repeat("x", 64<<10) + `"}`)
	batch := make([]relay.Message, 80)
	for i := range batch {
		batch[i] = relay.Message{ID: fmt.Sprintf("big-%d", i), Body: body}
	}
	if err := q.SendBatch(ctx, batch); err != nil {
		t.Fatal(err)
	}
	testwait.Until(t, 10*time.Second, "a timed restarting checkpoint", func() bool {
		return metrictest.SampleCount(t, reg, "hookbridge_queue_checkpoint_duration_seconds", "mode", "restart") >= 1
	})
	restarts := metrictest.Value(t, reg, "hookbridge_queue_checkpoints_total", "mode", "restart", "result", "ok")
	if restarts < 1 {
		t.Errorf("restarting checkpoints counted: %v, want at least 1", restarts)
	}

	// Until something is written, the restarted log still reports its old
	// frames; restarting it again would only take the write lock from
	// writers, ten times a second on an idle queue.
	time.Sleep(600 * time.Millisecond)
	if n := metrictest.Value(t, reg, "hookbridge_queue_checkpoints_total", "mode", "restart"); n != restarts {
		t.Errorf("restarting checkpoints of an idle, restarted log: %v, want still %v", n, restarts)
	}
}
