// Package tracingtest is an in-process OpenTelemetry collector for tests:
// it receives OTLP trace exports over HTTP (protobuf) and gRPC, the way a
// real collector does, decodes them with the OTLP protocol's own Go types,
// and keeps the spans for the test to inspect.
//
//	rcv := tracingtest.NewReceiver(t)
//	// OTEL_EXPORTER_OTLP_ENDPOINT=rcv.URL (HTTP), or rcv.GRPCURL with
//	// OTEL_EXPORTER_OTLP_PROTOCOL=grpc
//	spans := rcv.WaitFor(t, 10*time.Second, "the delivery span", func(s []tracingtest.Span) bool { ... })
package tracingtest

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// Span is a received span, flattened for assertions. IDs are lower-case
// hex; attribute values are formatted as strings.
type Span struct {
	Name                      string
	Kind                      string // server, client, producer, consumer or internal
	TraceID, SpanID, ParentID string
	Attributes                map[string]string
	Links                     []Link
	StatusCode                string // "", "ok" or "error"
	StatusMessage             string
	Service                   string // the resource's service.name
	Resource                  map[string]string
	Start, End                time.Time
	Scope                     string // the instrumentation scope
}

// Link is a span link.
type Link struct{ TraceID, SpanID string }

// String describes s in one line, for failure messages.
func (s Span) String() string {
	return fmt.Sprintf("%s %q trace=%s span=%s parent=%s service=%s status=%s %s attrs=%v links=%v",
		s.Kind, s.Name, s.TraceID, s.SpanID, s.ParentID, s.Service, s.StatusCode, s.StatusMessage, s.Attributes, s.Links)
}

// Receiver is a running in-process collector.
type Receiver struct {
	// URL is the base URL of its OTLP/HTTP endpoint: exporters post to
	// URL + "/v1/traces".
	URL string
	// GRPCURL is the URL of its OTLP/gRPC endpoint (http://host:port).
	GRPCURL string

	mu       sync.Mutex
	spans    []Span
	requests []string // the Content-Type of each HTTP export, "grpc" for gRPC
	fail     int      // exports still to refuse with 503
}

// NewReceiver starts a receiver on loopback, stopped when the test ends.
func NewReceiver(t testing.TB) *Receiver {
	t.Helper()
	r := &Receiver{}
	hs := httptest.NewServer(http.HandlerFunc(r.serveHTTP))
	t.Cleanup(hs.Close)
	r.URL = hs.URL

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("tracingtest: %v", err)
	}
	gs := grpc.NewServer()
	coltracepb.RegisterTraceServiceServer(gs, grpcService{r: r})
	go gs.Serve(l)
	t.Cleanup(gs.Stop)
	r.GRPCURL = "http://" + l.Addr().String()
	return r
}

// FailNext makes the next n exports fail with 503 (gRPC: Unavailable), as
// an overloaded or restarting collector does.
func (r *Receiver) FailNext(n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fail = n
}

// Spans returns every span received so far, in arrival order.
func (r *Receiver) Spans() []Span {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.spans)
}

// Requests returns the Content-Type of each export received ("grpc" for
// the gRPC ones), refused ones included.
func (r *Receiver) Requests() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.requests)
}

// WaitFor polls the received spans until cond holds, failing the test
// with what arrived after timeout.
func (r *Receiver) WaitFor(t testing.TB, timeout time.Duration, what string, cond func([]Span) bool) []Span {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		spans := r.Spans()
		if cond(spans) {
			return spans
		}
		if time.Now().After(deadline) {
			var b bytes.Buffer
			for _, s := range spans {
				fmt.Fprintf(&b, "\n  %s", s)
			}
			t.Fatalf("tracingtest: after %v, still waiting for %s; %d spans received:%s", timeout, what, len(spans), b.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// WaitForRequests waits until at least n exports arrived, refused ones
// included.
func (r *Receiver) WaitForRequests(t testing.TB, timeout time.Duration, n int) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for len(r.Requests()) < n {
		if time.Now().After(deadline) {
			t.Fatalf("tracingtest: after %v, %d exports arrived, want %d", timeout, len(r.Requests()), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// maxExport bounds one export's body.
const maxExport = 16 << 20

func (r *Receiver) serveHTTP(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodPost || req.URL.Path != "/v1/traces" {
		http.Error(w, "OTLP traces go to POST /v1/traces", http.StatusNotFound)
		return
	}
	ct := req.Header.Get("Content-Type")
	if r.refuse(ct) {
		http.Error(w, "refused for the test", http.StatusServiceUnavailable)
		return
	}
	var body io.Reader = http.MaxBytesReader(w, req.Body, maxExport)
	if req.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		body = zr
	}
	b, err := io.ReadAll(body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if ct != "application/x-protobuf" {
		// OTLP/JSON: counted by Requests, not decoded.
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, "{}")
		return
	}
	var msg coltracepb.ExportTraceServiceRequest
	if err := proto.Unmarshal(b, &msg); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	r.add(&msg)
	out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
	w.Header().Set("Content-Type", "application/x-protobuf")
	w.Write(out)
}

// refuse records an export and reports whether to refuse it.
func (r *Receiver) refuse(kind string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.requests = append(r.requests, kind)
	if r.fail > 0 {
		r.fail--
		return true
	}
	return false
}

type grpcService struct {
	coltracepb.UnimplementedTraceServiceServer
	r *Receiver
}

func (g grpcService) Export(_ context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	if g.r.refuse("grpc") {
		return nil, status.Error(codes.Unavailable, "refused for the test")
	}
	g.r.add(req)
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

func (r *Receiver) add(req *coltracepb.ExportTraceServiceRequest) {
	var spans []Span
	for _, rs := range req.GetResourceSpans() {
		res := attrs(rs.GetResource().GetAttributes())
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				sp := Span{
					Name:          s.GetName(),
					Kind:          kind(s.GetKind()),
					TraceID:       hex.EncodeToString(s.GetTraceId()),
					SpanID:        hex.EncodeToString(s.GetSpanId()),
					ParentID:      hex.EncodeToString(s.GetParentSpanId()),
					Attributes:    attrs(s.GetAttributes()),
					StatusMessage: s.GetStatus().GetMessage(),
					Service:       res["service.name"],
					Resource:      res,
					Start:         time.Unix(0, int64(s.GetStartTimeUnixNano())),
					End:           time.Unix(0, int64(s.GetEndTimeUnixNano())),
					Scope:         ss.GetScope().GetName(),
				}
				switch s.GetStatus().GetCode() {
				case tracepb.Status_STATUS_CODE_OK:
					sp.StatusCode = "ok"
				case tracepb.Status_STATUS_CODE_ERROR:
					sp.StatusCode = "error"
				}
				for _, l := range s.GetLinks() {
					sp.Links = append(sp.Links, Link{TraceID: hex.EncodeToString(l.GetTraceId()), SpanID: hex.EncodeToString(l.GetSpanId())})
				}
				spans = append(spans, sp)
			}
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.spans = append(r.spans, spans...)
}

func kind(k tracepb.Span_SpanKind) string {
	switch k {
	case tracepb.Span_SPAN_KIND_SERVER:
		return "server"
	case tracepb.Span_SPAN_KIND_CLIENT:
		return "client"
	case tracepb.Span_SPAN_KIND_PRODUCER:
		return "producer"
	case tracepb.Span_SPAN_KIND_CONSUMER:
		return "consumer"
	}
	return "internal"
}

func attrs(kvs []*commonpb.KeyValue) map[string]string {
	m := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		m[kv.GetKey()] = value(kv.GetValue())
	}
	return m
}

func value(v *commonpb.AnyValue) string {
	switch x := v.GetValue().(type) {
	case *commonpb.AnyValue_StringValue:
		return x.StringValue
	case *commonpb.AnyValue_IntValue:
		return strconv.FormatInt(x.IntValue, 10)
	case *commonpb.AnyValue_BoolValue:
		return strconv.FormatBool(x.BoolValue)
	case *commonpb.AnyValue_DoubleValue:
		return strconv.FormatFloat(x.DoubleValue, 'g', -1, 64)
	}
	return fmt.Sprint(v)
}

// ByName returns the spans named name.
func ByName(spans []Span, name string) []Span {
	var out []Span
	for _, s := range spans {
		if s.Name == name {
			out = append(out, s)
		}
	}
	return out
}

// Find returns the first span named name whose attribute key is value
// ("" key: any), and whether there is one.
func Find(spans []Span, name, key, value string) (Span, bool) {
	for _, s := range spans {
		if s.Name == name && (key == "" || s.Attributes[key] == value) {
			return s, true
		}
	}
	return Span{}, false
}
