package tracing_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/hookbridge/hookbridge/internal/tracing"
	"github.com/hookbridge/hookbridge/internal/tracing/tracingtest"
)

func getenv(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestFromEnv(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		env      map[string]string
		flag     string
		on       bool
		endpoint string
		protocol string
		service  string
	}{
		{name: "nothing set: off", env: nil},
		{name: "only a service name: off", env: map[string]string{"OTEL_SERVICE_NAME": "x"}},
		{name: "base endpoint", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4318"},
			on: true, endpoint: "http://otel:4318/v1/traces", protocol: "http/protobuf", service: "svc"},
		{name: "base endpoint with a path", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "https://otel.example.com/otlp/"},
			on: true, endpoint: "https://otel.example.com/otlp/v1/traces", protocol: "http/protobuf", service: "svc"},
		{name: "traces endpoint used as it is and winning", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4318", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://b:4318/custom"},
			on: true, endpoint: "http://b:4318/custom", protocol: "http/protobuf", service: "svc"},
		{name: "gRPC keeps the base URL", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
			on: true, endpoint: "http://otel:4317", protocol: "grpc", service: "svc"},
		{name: "traces protocol wins", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"},
			on: true, endpoint: "http://otel:4318/v1/traces", protocol: "http/json", service: "svc"},
		{name: "exporter otlp alone: the default endpoint", env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp"},
			on: true, endpoint: "http://localhost:4318/v1/traces", protocol: "http/protobuf", service: "svc"},
		{name: "exporter otlp over gRPC: its default endpoint", env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
			on: true, endpoint: "http://localhost:4317", protocol: "grpc", service: "svc"},
		{name: "flag alone", flag: "http://jaeger:4318",
			on: true, endpoint: "http://jaeger:4318/v1/traces", protocol: "http/protobuf", service: "svc"},
		{name: "flag with the traces path kept", flag: "http://jaeger:4318/v1/traces",
			on: true, endpoint: "http://jaeger:4318/v1/traces", protocol: "http/protobuf", service: "svc"},
		{name: "flag wins over the environment", env: map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://b:4318/x"}, flag: "http://jaeger:4318",
			on: true, endpoint: "http://jaeger:4318/v1/traces", protocol: "http/protobuf", service: "svc"},
		{name: "SDK disabled wins over everything", env: map[string]string{"OTEL_SDK_DISABLED": "TRUE", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4318"}, flag: "http://jaeger:4318"},
		{name: "exporter none wins", env: map[string]string{"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4318"}},
		{name: "service name from resource attributes", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4318", "OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attrs,deployment.environment=prod"},
			on: true, endpoint: "http://otel:4318/v1/traces", protocol: "http/protobuf", service: "from-attrs"},
		{name: "OTEL_SERVICE_NAME wins", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4318", "OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attrs", "OTEL_SERVICE_NAME": "named"},
			on: true, endpoint: "http://otel:4318/v1/traces", protocol: "http/protobuf", service: "named"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg, on, err := tracing.FromEnv(getenv(tt.env), tt.flag, "svc")
			if err != nil {
				t.Fatal(err)
			}
			if on != tt.on {
				t.Fatalf("on = %v, want %v", on, tt.on)
			}
			if !on {
				return
			}
			if cfg.Endpoint != tt.endpoint || cfg.Protocol != tt.protocol || cfg.ServiceName != tt.service {
				t.Errorf("endpoint %q protocol %q service %q, want %q %q %q", cfg.Endpoint, cfg.Protocol, cfg.ServiceName, tt.endpoint, tt.protocol, tt.service)
			}
			if err := cfg.Validate(); err != nil {
				t.Errorf("FromEnv's config does not validate: %v", err)
			}
		})
	}
}

func TestFromEnvRefusesWhatItCannotHonour(t *testing.T) {
	t.Parallel()
	on := map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4318"}
	with := func(k, v string) map[string]string {
		m := map[string]string{k: v}
		for k, v := range on {
			if _, ok := m[k]; !ok {
				m[k] = v
			}
		}
		return m
	}
	tests := []struct {
		name string
		env  map[string]string
		flag string
		want string
	}{
		{"unknown exporter", with("OTEL_TRACES_EXPORTER", "zipkin"), "", "OTEL_TRACES_EXPORTER"},
		{"unknown protocol", with("OTEL_EXPORTER_OTLP_PROTOCOL", "thrift"), "", "OTEL_EXPORTER_OTLP_PROTOCOL"},
		{"unknown traces protocol", with("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "udp"), "", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"},
		{"endpoint not a URL", with("OTEL_EXPORTER_OTLP_ENDPOINT", "otel:4318"), "", "OTEL_EXPORTER_OTLP_ENDPOINT"},
		{"traces endpoint not http", with("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "ftp://otel/x"), "", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"},
		{"flag not a URL", nil, "localhost:4318", "--trace-endpoint"},
		{"unknown sampler", with("OTEL_TRACES_SAMPLER", "jaeger_remote"), "", "OTEL_TRACES_SAMPLER"},
		{"ratio not a number", with("OTEL_TRACES_SAMPLER", "traceidratio"), "", ""},
		{"ratio above one", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://o:4318", "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.5"}, "", "OTEL_TRACES_SAMPLER_ARG"},
		{"ratio garbage", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://o:4318", "OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "half"}, "", "OTEL_TRACES_SAMPLER_ARG"},
		{"resource attribute without =", with("OTEL_RESOURCE_ATTRIBUTES", "a=1,broken"), "", "OTEL_RESOURCE_ATTRIBUTES"},
		{"resource attribute badly encoded", with("OTEL_RESOURCE_ATTRIBUTES", "a=%zz"), "", "OTEL_RESOURCE_ATTRIBUTES"},
		{"batch delay not a number", with("OTEL_BSP_SCHEDULE_DELAY", "5s"), "", "OTEL_BSP_SCHEDULE_DELAY"},
		{"header without =", with("OTEL_EXPORTER_OTLP_HEADERS", "api-key=ok,Authorization Bearer s3cr3tT0ken"), "", "OTEL_EXPORTER_OTLP_HEADERS: entry 2"},
		{"header badly encoded", with("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "Authorization=Bearer%ZZs3cr3t"), "", "OTEL_EXPORTER_OTLP_TRACES_HEADERS: the value of entry 1 (Authorization)"},
		{"valid headers", with("OTEL_EXPORTER_OTLP_HEADERS", "api-key=ok, Authorization=Bearer%20t0k"), "", ""},
		{"absurd batch queue", with("OTEL_BSP_MAX_QUEUE_SIZE", "99999999999"), "", "OTEL_BSP_MAX_QUEUE_SIZE"},
		{"batch size not a number", with("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "lots"), "", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, _, err := tracing.FromEnv(getenv(tt.env), tt.flag, "svc")
			if tt.want == "" {
				if err != nil {
					t.Fatalf("refused a valid setting: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to name %s", err, tt.want)
			}
			if strings.Contains(err.Error(), "s3cr3t") {
				t.Errorf("the error shows a header's secret: %v", err)
			}
		})
	}
}

func TestSamplerFromEnv(t *testing.T) {
	t.Parallel()
	base := map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://o:4318"}
	tests := []struct {
		sampler, arg string
		want         string // the sampler's Description
	}{
		{"", "", "ParentBased{root:AlwaysOnSampler"},
		{"always_on", "", "AlwaysOnSampler"},
		{"ALWAYS_OFF", "", "AlwaysOffSampler"},
		{"traceidratio", "0.25", "TraceIDRatioBased{0.25}"},
		{"parentbased_traceidratio", "0.5", "ParentBased{root:TraceIDRatioBased{0.5}"},
		{"parentbased_always_off", "", "ParentBased{root:AlwaysOffSampler"},
	}
	for _, tt := range tests {
		env := map[string]string{"OTEL_TRACES_SAMPLER": tt.sampler, "OTEL_TRACES_SAMPLER_ARG": tt.arg}
		for k, v := range base {
			env[k] = v
		}
		cfg, _, err := tracing.FromEnv(getenv(env), "", "svc")
		if err != nil {
			t.Fatal(err)
		}
		got := ""
		if cfg.Sampler != nil {
			got = cfg.Sampler.Description()
		}
		if !strings.HasPrefix(got, tt.want) {
			t.Errorf("%s %s: sampler %q, want %q", tt.sampler, tt.arg, got, tt.want)
		}
	}
}

// TestRemoteSampledFlagIsNotTrusted: a caller of the public ingress cannot
// make it record a request by sending a traceparent that says "sampled",
// nor hide one by saying "not sampled"; the configured sampler decides, on
// the caller's trace ID, which the spans keep.
func TestRemoteSampledFlagIsNotTrusted(t *testing.T) {
	t.Parallel()
	remote := func(sampled bool) context.Context {
		flags := trace.TraceFlags(0)
		if sampled {
			flags = trace.FlagsSampled
		}
		sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{1, 2, 3}, SpanID: trace.SpanID{4}, TraceFlags: flags, Remote: true})
		return trace.ContextWithRemoteSpanContext(context.Background(), sc)
	}
	for _, tt := range []struct {
		sampler, arg string
		sampled      bool // the remote parent's flag
		want         sdktrace.SamplingDecision
	}{
		{"parentbased_traceidratio", "0", true, sdktrace.Drop},
		{"parentbased_always_off", "", true, sdktrace.Drop},
		{"", "", false, sdktrace.RecordAndSample},
		{"parentbased_always_on", "", false, sdktrace.RecordAndSample},
	} {
		cfg, _, err := tracing.FromEnv(getenv(map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://o:4318",
			"OTEL_TRACES_SAMPLER": tt.sampler, "OTEL_TRACES_SAMPLER_ARG": tt.arg}), "", "svc")
		if err != nil {
			t.Fatal(err)
		}
		ctx := remote(tt.sampled)
		got := cfg.Sampler.ShouldSample(sdktrace.SamplingParameters{ParentContext: ctx, TraceID: trace.TraceID{1, 2, 3}, Name: "POST /acs/callbacks", Kind: trace.SpanKindServer})
		if got.Decision != tt.want {
			t.Errorf("sampler %q %q, remote parent sampled=%v: decision %v, want %v", tt.sampler, tt.arg, tt.sampled, got.Decision, tt.want)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	valid := tracing.Config{Endpoint: "http://localhost:4318/v1/traces"}
	if err := valid.Validate(); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		change func(*tracing.Config)
	}{
		{"no endpoint nor exporter", func(c *tracing.Config) { c.Endpoint = "" }},
		{"endpoint without scheme", func(c *tracing.Config) { c.Endpoint = "localhost:4318" }},
		{"unknown protocol", func(c *tracing.Config) { c.Protocol = "http/xml" }},
		{"negative batch timeout", func(c *tracing.Config) { c.BatchTimeout = -time.Second }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := valid
			tt.change(&c)
			if err := c.Validate(); err == nil {
				t.Error("accepted")
			}
		})
	}
}

// TestExportsOverEveryProtocol sends a span through the real OTLP
// exporters to an in-process collector: HTTP with protobuf, gRPC, and HTTP
// with JSON; Shutdown flushes what is buffered.
func TestExportsOverEveryProtocol(t *testing.T) {
	t.Parallel()
	for _, proto := range []string{tracing.ProtocolHTTPProtobuf, tracing.ProtocolGRPC, tracing.ProtocolHTTPJSON} {
		t.Run(proto, func(t *testing.T) {
			t.Parallel()
			rcv := tracingtest.NewReceiver(t)
			env := map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": rcv.URL, "OTEL_EXPORTER_OTLP_PROTOCOL": proto,
				"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=test"}
			if proto == tracing.ProtocolGRPC {
				env["OTEL_EXPORTER_OTLP_ENDPOINT"] = rcv.GRPCURL
			}
			cfg, on, err := tracing.FromEnv(getenv(env), "", "hookbridge-test")
			if err != nil || !on {
				t.Fatalf("FromEnv: %v %v", on, err)
			}
			cfg.ServiceVersion = "v9.9.9"
			p, err := tracing.New(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			_, span := p.TracerProvider().Tracer("test").Start(context.Background(), "hello", trace.WithSpanKind(trace.SpanKindServer))
			span.End()
			if err := p.Shutdown(context.Background()); err != nil {
				t.Fatal(err)
			}
			reqs := rcv.Requests()
			if len(reqs) == 0 {
				t.Fatal("nothing exported by Shutdown")
			}
			switch proto {
			case tracing.ProtocolHTTPJSON:
				if reqs[0] != "application/json" {
					t.Errorf("exported as %q, want application/json", reqs[0])
				}
				return // not decoded by the receiver
			case tracing.ProtocolGRPC:
				if reqs[0] != "grpc" {
					t.Errorf("exported as %q, want gRPC", reqs[0])
				}
			}
			s, ok := tracingtest.Find(rcv.Spans(), "hello", "", "")
			if !ok {
				t.Fatalf("span not received: %v", rcv.Spans())
			}
			if s.Kind != "server" || s.Service != "hookbridge-test" || s.Resource["service.version"] != "v9.9.9" ||
				s.Resource["deployment.environment.name"] != "test" {
				t.Errorf("received %s resource %v", s, s.Resource)
			}
		})
	}
}

// TestUnreachableCollector: spans for a collector that refuses them (and
// that the exporter retries with backoff) cost a bounded shutdown, never a
// hang.
func TestUnreachableCollector(t *testing.T) {
	t.Parallel()
	rcv := tracingtest.NewReceiver(t)
	rcv.FailNext(1000)
	p, err := tracing.New(context.Background(), tracing.Config{Endpoint: rcv.URL + "/v1/traces", BatchTimeout: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	tr := p.TracerProvider().Tracer("test")
	for range 5 {
		_, span := tr.Start(context.Background(), "lost")
		span.End()
	}
	rcv.WaitForRequests(t, 5*time.Second, 1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	start := time.Now()
	if err := p.Shutdown(ctx); err == nil {
		t.Error("Shutdown reported the refused spans exported")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("shutdown took %v", d)
	}
	if n := len(rcv.Spans()); n != 0 {
		t.Errorf("%d spans accepted by a refusing collector", n)
	}
}

// TestExporterOverride: a Config's Exporter takes the spans (tests use the
// SDK's in-memory one).
func TestExporterOverride(t *testing.T) {
	t.Parallel()
	exp := &countingExporter{}
	p, err := tracing.New(context.Background(), tracing.Config{Exporter: exp})
	if err != nil {
		t.Fatal(err)
	}
	_, span := p.TracerProvider().Tracer("t").Start(context.Background(), "x")
	span.End()
	if err := p.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if exp.n != 1 {
		t.Errorf("%d spans exported", exp.n)
	}
	if err := p.Shutdown(context.Background()); err != nil && !errors.Is(err, context.Canceled) {
		t.Logf("second shutdown: %v", err) // allowed to complain, never to hang
	}
}

type countingExporter struct{ n int }

func (e *countingExporter) ExportSpans(_ context.Context, s []sdktrace.ReadOnlySpan) error {
	e.n += len(s)
	return nil
}
func (e *countingExporter) Shutdown(context.Context) error { return nil }
