package sqlite_test

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
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
	// The same element twice more, in one batch: stored once, so counted
	// as dead-lettered once, and the repeats as duplicates.
	bad := relay.Message{ID: "bad", Body: []byte(`{}`), DeadLetterReason: relay.ReasonMalformedEvent, DeadLetterDescription: "not an event"}
	if err := q.SendBatch(ctx, []relay.Message{bad, bad}); err != nil {
		t.Fatal(err)
	}
	if n := metrictest.Value(t, reg, "hookbridge_queue_dead_lettered_total", "reason", relay.ReasonMalformedEvent); n != 1 {
		t.Errorf("dead-lettered as %s after two repeats: %v, want 1", relay.ReasonMalformedEvent, n)
	}
	if n := metrictest.Value(t, reg, "hookbridge_queue_duplicates_dropped_total"); n != 2 {
		t.Errorf("repeated dead letters counted as duplicates: %v, want 2", n)
	}
	if _, dl, err := q.Counts(ctx); err != nil || dl != 1 {
		t.Errorf("dead-letter queue holds %d (%v), want 1", dl, err)
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

// A reader holding the log in use (a backup of the file, say) keeps it
// from starting over. The restarting checkpoints that find it there must
// give up at once, not hold every writer off for busy_timeout, and must not
// retry every tick; once the reader ends, the log is restarted.
func TestReaderHoldingTheLogDoesNotStallWriters(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	path := filepath.Join(t.TempDir(), "q.db")
	q := sqlitetest.Open(t, sqlite.Config{Path: path, BusyTimeout: 2 * time.Second, Metrics: sqlite.NewMetrics(reg)})
	ctx := context.Background()
	if err := q.SendBatch(ctx, []relay.Message{{ID: "first", Body: []byte(`{}`)}}); err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	reader, err := db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	var n int
	if err := reader.QueryRow(`SELECT count(*) FROM queue`).Scan(&n); err != nil {
		t.Fatal(err)
	}

	body := []byte(`{"pad":"` + strings.Repeat("x", 64<<10) + `"}`)
	var slowest time.Duration
	deadline := time.Now().Add(3 * time.Second)
	for i := 0; time.Now().Before(deadline); i++ {
		batch := make([]relay.Message, 8)
		for j := range batch {
			batch[j] = relay.Message{ID: fmt.Sprintf("m-%d-%d", i, j), Body: body}
		}
		start := time.Now()
		if err := q.SendBatch(ctx, batch); err != nil {
			t.Fatalf("send %d with a reader holding the log: %v", i, err)
		}
		slowest = max(slowest, time.Since(start))
	}
	failed := metrictest.Value(t, reg, "hookbridge_queue_checkpoints_total", "mode", "restart", "result", "error")
	if failed < 1 {
		t.Fatalf("no restart was tried while the reader held the log (%v); the test did not test anything", failed)
	}
	if slowest > 1500*time.Millisecond {
		t.Errorf("slowest send while a reader held the log: %v; restarts waiting for it held writers off", slowest)
	}
	if failed > 8 {
		t.Errorf("%v restarts tried in 3s while the reader held the log, want a handful: retries back off", failed)
	}
	if err := q.Ready(ctx); err != nil {
		t.Errorf("Ready while a reader holds the log: %v, want ready: writes succeed", err)
	}

	reader.Rollback()
	if err := q.SendBatch(ctx, []relay.Message{{ID: "after", Body: []byte(`{}`)}}); err != nil {
		t.Fatal(err)
	}
	testwait.Until(t, 10*time.Second, "a restart once the reader ended", func() bool {
		return metrictest.Value(t, reg, "hookbridge_queue_checkpoints_total", "mode", "restart", "result", "ok") >= 1
	})
}
