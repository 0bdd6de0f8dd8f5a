package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hookbridge/hookbridge/internal/freeport"
	"github.com/hookbridge/hookbridge/internal/sbemu"
	"github.com/hookbridge/hookbridge/internal/testwait"
	"github.com/hookbridge/hookbridge/relay"
)

// TestWorkerCountsEveryDeadLettering runs `hookbridge worker` on Service
// Bus with a backend that always answers 500, and a signed-but-malformed
// event the ingress marked for the dead-letter queue. Every dead-lettering
// is visible: the failing events are dead-lettered by the worker on their
// last allowed delivery (max_delivery), counted dead_lettered and logged
// with reason and event id; the marked one is dead-lettered on arrival,
// counted and logged, and never reaches the backend.
func TestWorkerCountsEveryDeadLettering(t *testing.T) {
	t.Parallel()
	emu := emulate(t, sbemu.QueueConfig{Name: "ev", RequiresSession: true, MaxDeliveryCount: 3, LockDuration: 10 * time.Second})
	posts := make(chan string, 100)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		posts <- r.URL.Path
		http.Error(w, "database down", http.StatusInternalServerError)
	}))
	defer backend.Close()

	const failing = 4
	var msgs []relay.Message
	for c := range failing {
		msgs = append(msgs, callEvent(t, "Microsoft.Communication.PlayCompleted", c, 0))
	}
	bad := callEvent(t, "Microsoft.Communication.PlayCompleted", 9, 0)
	bad.DeadLetterReason, bad.DeadLetterDescription = relay.ReasonMalformedEvent, "time: not RFC 3339"
	msgs = append(msgs, bad)
	if err := sbQueue(t, emu, "ev").SendBatch(context.Background(), msgs); err != nil {
		t.Fatal(err)
	}

	admin := freeport.Addr(t)
	w := startWithEnv(t, sbEnv(emu), "worker", "--queue", "servicebus:///ev?max_delivery=3", "--deliver", backend.URL,
		"--admin-listen", admin, "--min-backoff", "10ms", "--max-backoff", "20ms", "--log-format", "json")
	waitHTTP(t, "http://"+admin+"/readyz")
	metrics := "http://" + admin + "/metrics"
	// The sessions are taken in any order: wait for both kinds.
	testwait.Until(t, 30*time.Second, "every failing event and the marked one dead-lettered", func() bool {
		return counter(t, metrics, "hookbridge_worker_deliveries_total", "outcome", "dead_lettered") >= failing &&
			counter(t, metrics, "hookbridge_servicebus_dead_lettered_on_arrival_total", "reason", relay.ReasonMalformedEvent) >= 1
	})
	if n := counter(t, metrics, "hookbridge_worker_deliveries_total", "outcome", "dead_lettered"); n != failing {
		t.Errorf("dead_lettered = %v, want %d", n, failing)
	}
	if n := counter(t, metrics, "hookbridge_servicebus_dead_lettered_on_arrival_total", "reason", relay.ReasonMalformedEvent); n != 1 {
		t.Errorf("dead_lettered_on_arrival{reason=MalformedEvent} = %v, want 1", n)
	}
	if n := counter(t, metrics, "hookbridge_worker_deliveries_total", "outcome", "retried"); n != 2*failing {
		t.Errorf("retried = %v, want %d (deliveries 1 and 2 of each)", n, 2*failing)
	}
	w.stop(t)
	if len(posts) != 3*failing {
		t.Errorf("the backend got %d requests, want %d: three deliveries of each failing event, none of the marked one", len(posts), 3*failing)
	}
	if st, _ := emu.Stats("ev"); st.DeadLettered != failing+1 || st.Active+st.Locked != 0 {
		t.Errorf("queue %+v, want %d dead-lettered and nothing left", st, failing+1)
	}
	logs := w.stderr.String()
	for c := range failing {
		id := callEvent(t, "x", c, 0).ID
		found := false
		for _, l := range strings.Split(logs, "\n") {
			if strings.Contains(l, `"level":"ERROR"`) && strings.Contains(l, `"reason":"MaxDeliveryCountExceeded"`) && strings.Contains(l, `"event_id":"`+id+`"`) {
				found = true
			}
		}
		if !found {
			t.Errorf("no error log line dead-lettering %s with its reason:\n%s", id, logs)
		}
	}
	if !strings.Contains(logs, `"reason":"MalformedEvent"`) || !strings.Contains(logs, `"event_id":"`+bad.ID+`"`) {
		t.Errorf("the marked event's dead-lettering is not logged:\n%s", logs)
	}
}
