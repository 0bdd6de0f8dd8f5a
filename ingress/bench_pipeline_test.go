package ingress_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/trace"

	"github.com/hookbridge/hookbridge/ingress"
	"github.com/hookbridge/hookbridge/relay"
)

// nopPublisher takes messages and stores nothing.
type nopPublisher struct{}

func (nopPublisher) Publish(context.Context, []relay.Message) error { return nil }

// BenchmarkPipeline measures the ingress's own work on POST /acs/callbacks
// with one event, without RSA verification or a queue commit: Echo, the
// middleware, body reading, parsing, normalizing and mapping to a message.
// It runs in one goroutine, so its instruction count (valgrind
// --tool=callgrind) is repeatable.
func BenchmarkPipeline(b *testing.B) { benchPipeline(b, nil) }

// BenchmarkPipelineTraced is BenchmarkPipeline with tracing on, every
// request sampled: the request, verify and send spans, the trace context
// stamped on the event and its message.
func BenchmarkPipelineTraced(b *testing.B) { benchPipeline(b, benchTracerProvider(b)) }

func benchPipeline(b *testing.B, tp trace.TracerProvider) {
	s, err := ingress.New(ingress.Config{Publisher: nopPublisher{}, ACSVerifiers: []ingress.Verifier{staticVerifier{true}}, TracerProvider: tp})
	if err != nil {
		b.Fatal(err)
	}
	h := s.Handler()
	b.ReportAllocs()
	for b.Loop() {
		req := httptest.NewRequest(http.MethodPost, "/acs/callbacks", strings.NewReader(callConnected))
		req.Header.Set("X-Test-Token", "ok")
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != 200 {
			b.Fatal(rec.Code)
		}
	}
}
