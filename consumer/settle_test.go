package consumer_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hookbridge/hookbridge/consumer"
	"github.com/hookbridge/hookbridge/internal/metrictest"
	"github.com/hookbridge/hookbridge/internal/testlog"
	"github.com/hookbridge/hookbridge/internal/testrun"
	"github.com/hookbridge/hookbridge/relay"
	"github.com/hookbridge/hookbridge/schemas"
)

// TestLastDeliveryDeadLettered: a retryable failure on the last delivery the
// queue allows is dead-lettered by the worker itself, with the queue's
// reason and the failure as description, counted dead_lettered and logged
// with reason and event id; earlier deliveries, and queues that do not say
// their maximum, are abandoned for a retry.
func TestLastDeliveryDeadLettered(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name           string
		count, max     int
		handlerErr     error
		wantKind       string
		wantReason     string
		wantInDesc     string
		wantCounted    string
		wantLoggedWith string
	}{
		{"last of 3", 3, 3, errors.New("POST http://backend answered 500 Internal Server Error"), "deadletter", relay.ReasonMaxDelivery,
			"delivery 3 of 3 failed: POST http://backend answered 500", "dead_lettered", "the last delivery"},
		{"beyond the max", 7, 5, errors.New("boom"), "deadletter", relay.ReasonMaxDelivery, "delivery 7 of 5 failed: boom", "dead_lettered", "the last delivery"},
		{"retry-after on the last", 10, 10, consumer.RetryAfter(time.Minute, errors.New("429")), "deadletter", relay.ReasonMaxDelivery, "429", "dead_lettered", "the last delivery"},
		{"second of 3", 2, 3, errors.New("boom"), "abandon", "", "", "retried", "will retry"},
		{"max unknown", 50, 0, errors.New("boom"), "abandon", "", "", "retried", "will retry"},
		{"permanent on the last", 3, 3, consumer.Permanent("BackendRejected", errors.New("400")), "deadletter", "BackendRejected", "400", "dead_lettered", "failed permanently"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			src := newFakeSource(event(t, "evt-last", "call-1"))
			src.pending[0].DeliveryCount, src.pending[0].MaxDeliveryCount = tt.count, tt.max
			var logs testlog.Buffer
			reg := prometheus.NewRegistry()
			metrics := consumer.NewMetrics(reg)
			// The handler's changes to the event do not change what the
			// worker logs about it.
			w, err := consumer.New(src, consumer.HandlerFunc(func(_ context.Context, e *schemas.Event) error {
				e.ID, e.Type = "changed", "changed"
				return tt.handlerErr
			}),
				consumer.Config{MinBackoff: time.Millisecond, MaxBackoff: time.Millisecond, Metrics: metrics,
					Logger: slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{AddSource: true}))})
			if err != nil {
				t.Fatal(err)
			}
			stop := testrun.Start(t, w.Run)
			waitSettled(t, src, 1)
			stop() // every settlement is counted once Run returns
			got := src.settled["evt-last"]
			if got.kind != tt.wantKind || got.reason != tt.wantReason || !strings.Contains(got.description, tt.wantInDesc) {
				t.Errorf("settled %+v, want %s %q with %q in the description", got, tt.wantKind, tt.wantReason, tt.wantInDesc)
			}
			if n := metrictest.Value(t, reg, "hookbridge_worker_deliveries_total", "outcome", tt.wantCounted); n != 1 {
				t.Errorf("deliveries_total{outcome=%q} = %v, want 1", tt.wantCounted, n)
			}
			recs := logs.Records(tt.wantLoggedWith)
			if len(recs) != 1 {
				t.Fatalf("%d log lines with %q, want 1:\n%s", len(recs), tt.wantLoggedWith, logs.String())
			}
			if recs[0]["event_id"] != "evt-last" || recs[0]["message_id"] != "evt-last" || recs[0]["type"] != "Microsoft.Communication.CallConnected" {
				t.Errorf("log line lacks the event's type and id, or the message id: %v", recs[0])
			}
			// The source a handler records is the worker's call site.
			where, _ := recs[0]["source"].(map[string]any)
			if fn, _ := where["function"].(string); !strings.HasSuffix(fn, "(*Worker).settle") {
				t.Errorf("log line's source %v, want the worker's settle", recs[0]["source"])
			}
			if tt.wantReason != "" && recs[0]["reason"] != tt.wantReason {
				t.Errorf("log line reason %v, want %s", recs[0]["reason"], tt.wantReason)
			}
		})
	}
}

// TestShutdownCutOffAbandonsAtOnce: a delivery still running when the
// shutdown grace period ends is not the backend's failure: it is abandoned
// with no backoff delay, counted abandoned, and a stuck retry holds nothing
// up.
func TestShutdownCutOffAbandonsAtOnce(t *testing.T) {
	t.Parallel()
	src := newFakeSource(event(t, "cut", "call-1"))
	started := make(chan struct{})
	reg := prometheus.NewRegistry()
	metrics := consumer.NewMetrics(reg)
	var logs testlog.Buffer
	w, _ := consumer.New(src, consumer.HandlerFunc(func(ctx context.Context, _ *schemas.Event) error {
		close(started)
		<-ctx.Done()
		return ctx.Err()
	}), consumer.Config{ShutdownTimeout: 100 * time.Millisecond, MinBackoff: 10 * time.Second, MaxBackoff: time.Minute,
		Metrics: metrics, Logger: slog.New(slog.NewJSONHandler(&logs, nil))})
	stop := testrun.Start(t, w.Run)
	<-started
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	got := src.settled["cut"]
	if got.kind != "abandon" || got.delay != 0 {
		t.Errorf("settled %+v, want abandoned with no delay", got)
	}
	if n := metrictest.Value(t, reg, "hookbridge_worker_deliveries_total", "outcome", "abandoned"); n != 1 {
		t.Errorf("deliveries_total{outcome=abandoned} = %v, want 1", n)
	}
	if n := metrictest.Value(t, reg, "hookbridge_worker_deliveries_total", "outcome", "retried"); n != 0 {
		t.Errorf("deliveries_total{outcome=retried} = %v, want 0", n)
	}
	if len(logs.Records("cut off by shutdown")) != 1 {
		t.Errorf("no log line for the cut-off delivery:\n%s", logs.String())
	}
}

// TestSlowBackendLoggedAsDeliveryTimeout: a delivery that outlasts the
// delivery timeout is retried and logged with cause delivery_timeout, so a
// backend that does the work and answers late stands out.
func TestSlowBackendLoggedAsDeliveryTimeout(t *testing.T) {
	t.Parallel()
	src := newFakeSource(event(t, "slow", "call-1"), event(t, "failing", "call-2"))
	var logs testlog.Buffer
	w, _ := consumer.New(src, consumer.HandlerFunc(func(ctx context.Context, e *schemas.Event) error {
		if e.ID == "failing" {
			return errors.New("connection refused")
		}
		<-ctx.Done()
		return ctx.Err()
	}), consumer.Config{DeliveryTimeout: 50 * time.Millisecond, MinBackoff: time.Millisecond, MaxBackoff: time.Millisecond,
		Logger: slog.New(slog.NewJSONHandler(&logs, nil))})
	stop := testrun.Start(t, w.Run)
	waitSettled(t, src, 2)
	stop()
	if got := src.settled["slow"]; got.kind != "abandon" {
		t.Errorf("slow delivery settled %+v, want abandoned for a retry", got)
	}
	recs := logs.Records("delivery timeout")
	if len(recs) != 1 || recs[0]["cause"] != "delivery_timeout" || recs[0]["event_id"] != "slow" {
		t.Fatalf("delivery-timeout log lines %v, want one with cause=delivery_timeout for event slow:\n%s", recs, logs.String())
	}
	if recs := logs.Records("delivery failed; will retry"); len(recs) != 1 || recs[0]["event_id"] != "failing" {
		t.Errorf("an ordinary failure is not logged as a failure: %v", recs)
	}
}
