package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hookbridge/hookbridge/internal/freeport"
	"github.com/hookbridge/hookbridge/internal/testwait"
	"github.com/hookbridge/hookbridge/relay"
)

// TestWorkerDoesNotFollowRedirects runs `hookbridge worker` against a
// backend that answers each event with a redirect (301, 302, 303, 307,
// 308) to a landing page answering 200. The worker must not follow them —
// the landing page never sees a request and no event counts as delivered —
// and must dead-letter each with reason BackendRejected and the redirect's
// target, without its query, in the description.
func TestWorkerDoesNotFollowRedirects(t *testing.T) {
	t.Parallel()
	var (
		mu      sync.Mutex
		posts   = map[string]int{}
		landing int
	)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if r.URL.Path == "/landing" {
			landing++
			return
		}
		var e struct {
			ID string `json:"id"`
		}
		json.NewDecoder(r.Body).Decode(&e)
		posts[r.Method+" "+e.ID]++
		var code int
		fmt.Sscanf(e.ID, "r-%d", &code)
		w.Header().Set("Location", "/landing?ticket=s3cret")
		w.WriteHeader(code)
	}))
	defer backend.Close()

	codes := []int{301, 302, 303, 307, 308}
	var msgs []relay.Message
	for i, code := range codes {
		m := callEvent(t, "Microsoft.Communication.PlayCompleted", i, 0)
		m.ID = fmt.Sprintf("r-%d", code)
		m.Body = []byte(strings.Replace(string(m.Body), `"id":"c`+fmt.Sprint(i)+`-0000"`, `"id":"`+m.ID+`"`, 1))
		msgs = append(msgs, m)
	}
	queue := sqliteWith(t, msgs...)

	admin := freeport.Addr(t)
	wrk := startWithEnv(t, os.Environ(), "worker", "--queue", queue, "--deliver", backend.URL+"/ev", "--admin-listen", admin, "--min-backoff", "10ms")
	waitHTTP(t, "http://"+admin+"/readyz")
	testwait.Until(t, 20*time.Second, "every redirected event dead-lettered", func() bool {
		return counter(t, "http://"+admin+"/metrics", "hookbridge_worker_deliveries_total", "outcome", "dead_lettered") == float64(len(codes))
	})
	if n := counter(t, "http://"+admin+"/metrics", "hookbridge_worker_deliveries_total", "outcome", "completed"); n != 0 {
		t.Errorf("%v deliveries completed, want 0", n)
	}
	wrk.stop(t)

	mu.Lock()
	if landing != 0 {
		t.Errorf("the redirect target was requested %d times", landing)
	}
	for _, code := range codes {
		if n := posts[fmt.Sprintf("POST r-%d", code)]; n != 1 {
			t.Errorf("r-%d was POSTed %d times, want once", code, n)
		}
	}
	mu.Unlock()

	out, _, code := runBinary(t, os.Environ(), "dlq", "list", "--json", "--queue", queue)
	if code != 0 {
		t.Fatalf("dlq list: exit %d", code)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != len(codes) {
		t.Fatalf("%d dead letters, want %d:\n%s", len(lines), len(codes), out)
	}
	for _, l := range lines {
		var rec dlqRecord
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			t.Fatal(err)
		}
		if rec.Reason != "BackendRejected" || !strings.Contains(rec.Description, "redirect to "+backend.URL+"/landing?REDACTED") ||
			!strings.Contains(rec.Description, strings.TrimPrefix(rec.MessageID, "r-")) {
			t.Errorf("dead letter %s: reason %q description %q", rec.MessageID, rec.Reason, rec.Description)
		}
		if strings.Contains(rec.Description, "s3cret") {
			t.Errorf("dead letter %s leaks the Location's query: %q", rec.MessageID, rec.Description)
		}
	}
}
