package consumer_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hookbridge/hookbridge/consumer"
	"github.com/hookbridge/hookbridge/internal/testrun"
)

// TestRedirectsAreNotFollowed: a backend answering a 3xx is a wrong delivery
// URL. Following it would re-send a 301/302/303 as a bodiless GET (and a 200
// there would complete an event nobody received) or send a 307/308 where
// nobody configured: the event is dead-lettered, saying where the redirect
// pointed, and the redirect's target never sees a request.
func TestRedirectsAreNotFollowed(t *testing.T) {
	t.Parallel()
	var landing atomic.Int32
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/landing" {
			landing.Add(1)
			return // 200
		}
		var code int
		fmt.Sscanf(strings.TrimPrefix(r.URL.Path, "/"), "%d", &code)
		w.Header().Set("Location", "/landing?session=s3cret")
		w.WriteHeader(code)
	}))
	t.Cleanup(backend.Close)

	for _, code := range []int{301, 302, 303, 307, 308} {
		for _, own := range []bool{false, true} {
			t.Run(fmt.Sprintf("%d/own-client=%v", code, own), func(t *testing.T) {
				t.Parallel()
				cfg := consumer.HTTPConfig{URL: fmt.Sprintf("%s/%d", backend.URL, code)}
				var client *http.Client
				if own {
					client = &http.Client{Timeout: 10 * time.Second} // follows redirects on its own
					cfg.Client = client
				}
				target, err := consumer.NewHTTP(cfg)
				if err != nil {
					t.Fatal(err)
				}
				if own && client.CheckRedirect != nil {
					t.Error("NewHTTP changed the caller's client")
				}
				id := fmt.Sprintf("r-%d-%v", code, own)
				src := newFakeSource(event(t, id, "k"))
				w, err := consumer.New(src, target, consumer.Config{MinBackoff: 10 * time.Millisecond})
				if err != nil {
					t.Fatal(err)
				}
				testrun.Start(t, w.Run)
				waitSettled(t, src, 1)
				got := src.settled[id]
				if got.kind != "deadletter" || got.reason != consumer.ReasonBackendRejected {
					t.Fatalf("a %d was settled %+v, want dead-lettered with reason %s", code, got, consumer.ReasonBackendRejected)
				}
				for _, want := range []string{fmt.Sprint(code), "redirect to " + backend.URL + "/landing?REDACTED", "not followed"} {
					if !strings.Contains(got.description, want) {
						t.Errorf("description %q lacks %q", got.description, want)
					}
				}
				if strings.Contains(got.description, "s3cret") {
					t.Errorf("description leaks the Location's query: %q", got.description)
				}
			})
		}
	}
	t.Cleanup(func() {
		if n := landing.Load(); n != 0 {
			t.Errorf("the redirect target was requested %d times", n)
		}
	})
}
