package tracing

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// OTLP protocols (OTEL_EXPORTER_OTLP_PROTOCOL).
const (
	ProtocolHTTPProtobuf = "http/protobuf"
	ProtocolHTTPJSON     = "http/json"
	ProtocolGRPC         = "grpc"
)

// Default collector addresses, the OpenTelemetry specification's, used when
// tracing is turned on (OTEL_TRACES_EXPORTER=otlp) without an endpoint.
const (
	DefaultHTTPEndpoint = "http://localhost:4318"
	DefaultGRPCEndpoint = "http://localhost:4317"
)

// tracesPath is appended to a base endpoint for the HTTP protocols.
const tracesPath = "/v1/traces"

// Config configures a Provider.
type Config struct {
	// Endpoint is where spans go: for the HTTP protocols the full URL of the
	// collector's traces resource (http://collector:4318/v1/traces), for
	// gRPC the collector's URL (http://collector:4317). http:// sends in
	// plain text, https:// over TLS. Required unless Exporter is set.
	Endpoint string
	// Protocol is ProtocolHTTPProtobuf (the default), ProtocolHTTPJSON or
	// ProtocolGRPC.
	Protocol string
	// Sampler decides which traces are recorded. Default: every trace,
	// following a local parent's decision; a remote parent's sampled flag
	// is not trusted (see parentBased).
	Sampler sdktrace.Sampler
	// ServiceName is the service.name resource attribute. Default
	// "hookbridge".
	ServiceName string
	// ServiceVersion is the service.version resource attribute.
	ServiceVersion string
	// Attributes are further resource attributes
	// (OTEL_RESOURCE_ATTRIBUTES).
	Attributes []attribute.KeyValue
	// BatchTimeout is the longest a finished span waits before it is
	// exported. Default 5s (the SDK's).
	BatchTimeout time.Duration
	// Exporter, when set, receives the spans instead of an OTLP exporter.
	Exporter sdktrace.SpanExporter
	// Logger receives export failures. Default: discard.
	Logger *slog.Logger
}

// Validate reports the first invalid setting.
func (c Config) Validate() error {
	switch c.Protocol {
	case "", ProtocolHTTPProtobuf, ProtocolHTTPJSON, ProtocolGRPC:
	default:
		return fmt.Errorf("tracing: protocol %q: use %s, %s or %s", c.Protocol, ProtocolHTTPProtobuf, ProtocolHTTPJSON, ProtocolGRPC)
	}
	switch {
	case c.Exporter == nil && c.Endpoint == "":
		return errors.New("tracing: no endpoint: set OTEL_EXPORTER_OTLP_ENDPOINT or --trace-endpoint to the collector's URL, e.g. http://localhost:4318")
	case c.Endpoint != "":
		if err := checkURL(c.Endpoint); err != nil {
			return fmt.Errorf("tracing: endpoint %q: %w", c.Endpoint, err)
		}
	}
	if c.BatchTimeout < 0 {
		return fmt.Errorf("tracing: batch timeout %s: must not be negative", c.BatchTimeout)
	}
	return nil
}

// checkURL accepts an absolute http:// or https:// URL with a host.
func checkURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return errors.New("not an absolute http:// or https:// URL, e.g. http://localhost:4318")
	}
	return nil
}

// Environment variables FromEnv reads.
const (
	EnvSDKDisabled        = "OTEL_SDK_DISABLED"
	EnvTracesExporter     = "OTEL_TRACES_EXPORTER"
	EnvEndpoint           = "OTEL_EXPORTER_OTLP_ENDPOINT"
	EnvTracesEndpoint     = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
	EnvProtocol           = "OTEL_EXPORTER_OTLP_PROTOCOL"
	EnvTracesProtocol     = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
	EnvSampler            = "OTEL_TRACES_SAMPLER"
	EnvSamplerArg         = "OTEL_TRACES_SAMPLER_ARG"
	EnvServiceName        = "OTEL_SERVICE_NAME"
	EnvResourceAttributes = "OTEL_RESOURCE_ATTRIBUTES"
	EnvBatchDelay         = "OTEL_BSP_SCHEDULE_DELAY"
	EnvHeaders            = "OTEL_EXPORTER_OTLP_HEADERS"
	EnvTracesHeaders      = "OTEL_EXPORTER_OTLP_TRACES_HEADERS"
	EnvBatchQueueSize     = "OTEL_BSP_MAX_QUEUE_SIZE"
	EnvBatchExportSize    = "OTEL_BSP_MAX_EXPORT_BATCH_SIZE"
)

// maxBatchQueue bounds OTEL_BSP_MAX_QUEUE_SIZE and
// OTEL_BSP_MAX_EXPORT_BATCH_SIZE: the SDK allocates the queue whole at
// start, so an absurd value would exhaust memory.
const maxBatchQueue = 1 << 20

// FromEnv reads the standard OpenTelemetry environment through getenv, with
// flagEndpoint (the --trace-endpoint flag, "" when unset) taking the place
// of OTEL_EXPORTER_OTLP_ENDPOINT and OTEL_EXPORTER_OTLP_TRACES_ENDPOINT. It
// reports on=false when tracing is off: no endpoint is named and
// OTEL_TRACES_EXPORTER is not otlp, or OTEL_SDK_DISABLED is true, or
// OTEL_TRACES_EXPORTER is none. service is the service.name used when
// neither OTEL_SERVICE_NAME nor OTEL_RESOURCE_ATTRIBUTES names one.
//
// Endpoints follow the specification: OTEL_EXPORTER_OTLP_ENDPOINT and the
// flag are base URLs, to which the HTTP protocols append /v1/traces (the
// flag's URL is kept as it is when it already ends so);
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is used as it is. A value FromEnv
// cannot honour is an error naming its variable.
func FromEnv(getenv func(string) string, flagEndpoint, service string) (cfg Config, on bool, err error) {
	get := func(k string) string { return strings.TrimSpace(getenv(k)) }
	if strings.EqualFold(get(EnvSDKDisabled), "true") {
		return Config{}, false, nil
	}
	exporter := strings.ToLower(get(EnvTracesExporter))
	switch exporter {
	case "", "otlp":
	case "none":
		return Config{}, false, nil
	default:
		return Config{}, false, fmt.Errorf("%s=%q: hookbridge exports traces over OTLP only; use otlp, or none to turn tracing off", EnvTracesExporter, exporter)
	}
	traces, base := get(EnvTracesEndpoint), get(EnvEndpoint)
	if flagEndpoint == "" && traces == "" && base == "" && exporter == "" {
		return Config{}, false, nil
	}

	cfg.Protocol = ProtocolHTTPProtobuf
	protoVar := EnvProtocol
	if p := get(EnvTracesProtocol); p != "" {
		cfg.Protocol, protoVar = p, EnvTracesProtocol
	} else if p := get(EnvProtocol); p != "" {
		cfg.Protocol = p
	}
	switch cfg.Protocol {
	case ProtocolHTTPProtobuf, ProtocolHTTPJSON, ProtocolGRPC:
	default:
		return Config{}, false, fmt.Errorf("%s=%q: use %s (the default), %s or %s", protoVar, cfg.Protocol, ProtocolHTTPProtobuf, ProtocolHTTPJSON, ProtocolGRPC)
	}
	grpc := cfg.Protocol == ProtocolGRPC

	switch {
	case flagEndpoint != "":
		if err := checkURL(flagEndpoint); err != nil {
			return Config{}, false, fmt.Errorf("--trace-endpoint %q: %w", flagEndpoint, err)
		}
		cfg.Endpoint = flagEndpoint
		if !grpc && !strings.HasSuffix(strings.TrimRight(flagEndpoint, "/"), tracesPath) {
			cfg.Endpoint = joinPath(flagEndpoint, tracesPath)
		}
	case traces != "":
		if err := checkURL(traces); err != nil {
			return Config{}, false, fmt.Errorf("%s=%q: %w", EnvTracesEndpoint, traces, err)
		}
		cfg.Endpoint = traces
	case base != "":
		if err := checkURL(base); err != nil {
			return Config{}, false, fmt.Errorf("%s=%q: %w", EnvEndpoint, base, err)
		}
		cfg.Endpoint = base
		if !grpc {
			cfg.Endpoint = joinPath(base, tracesPath)
		}
	case grpc:
		cfg.Endpoint = DefaultGRPCEndpoint
	default:
		cfg.Endpoint = DefaultHTTPEndpoint + tracesPath
	}

	if cfg.Sampler, err = samplerFromEnv(get(EnvSampler), get(EnvSamplerArg)); err != nil {
		return Config{}, false, err
	}
	if cfg.Attributes, err = parseResourceAttributes(get(EnvResourceAttributes)); err != nil {
		return Config{}, false, err
	}
	cfg.ServiceName = service
	for _, a := range cfg.Attributes {
		if a.Key == semconv.ServiceNameKey {
			cfg.ServiceName = a.Value.AsString()
		}
	}
	if name := get(EnvServiceName); name != "" {
		cfg.ServiceName = name
	}
	for _, k := range []string{EnvHeaders, EnvTracesHeaders} {
		if err := checkHeaders(k, getenv(k)); err != nil {
			return Config{}, false, err
		}
	}
	for _, k := range []string{EnvBatchQueueSize, EnvBatchExportSize} {
		if v := get(k); v != "" {
			if n, err := strconv.Atoi(v); err != nil || n < 1 || n > maxBatchQueue {
				return Config{}, false, fmt.Errorf("%s=%q: use a whole number from 1 to %d", k, v, maxBatchQueue)
			}
		}
	}
	if d := get(EnvBatchDelay); d != "" {
		ms, err := strconv.Atoi(d)
		if err != nil || ms < 0 {
			return Config{}, false, fmt.Errorf("%s=%q: use a whole number of milliseconds, e.g. 5000", EnvBatchDelay, d)
		}
		cfg.BatchTimeout = time.Duration(ms) * time.Millisecond
	}
	return cfg, true, nil
}

// checkHeaders checks the format of an OTLP headers variable, which the SDK
// reads itself: comma-separated key=value pairs, values percent-encoded.
// The SDK drops a malformed pair and logs it whole, and headers carry
// credentials; so a malformed one is refused here, naming its position and
// never its text.
func checkHeaders(name, raw string) error {
	if strings.TrimSpace(raw) == "" {
		return nil
	}
	for i, pair := range strings.Split(raw, ",") {
		key, value, ok := strings.Cut(pair, "=")
		if !ok || strings.TrimSpace(key) == "" {
			return fmt.Errorf("%s: entry %d is not key=value (its text is not shown: headers carry credentials); write e.g. Authorization=Bearer%%20<token>", name, i+1)
		}
		if _, err := url.QueryUnescape(strings.TrimSpace(value)); err != nil {
			return fmt.Errorf("%s: the value of entry %d (%s) is not valid percent-encoding; encode %%, spaces and commas in it", name, i+1, strings.TrimSpace(key))
		}
	}
	return nil
}

// joinPath appends p to the path of the URL raw (checked by checkURL).
func joinPath(raw, p string) string {
	u, _ := url.Parse(raw)
	u.Path = strings.TrimRight(u.Path, "/") + p
	u.RawPath = ""
	return u.String()
}

// parentBased follows a parent span of this process, but not the sampled
// flag of a remote one: the ingress takes requests from anyone, and a
// caller must not be able to make it record (and export) every request by
// sending "sampled". A remote parent's trace is still continued; root
// decides whether it is recorded (consistently by trace ID, so a worker
// with the same sampler records the traces its ingress did).
func parentBased(root sdktrace.Sampler) sdktrace.Sampler {
	return sdktrace.ParentBased(root, sdktrace.WithRemoteParentSampled(root), sdktrace.WithRemoteParentNotSampled(root))
}

// samplerFromEnv maps OTEL_TRACES_SAMPLER and its argument to a sampler.
func samplerFromEnv(name, arg string) (sdktrace.Sampler, error) {
	ratio := func() (float64, error) {
		if arg == "" {
			return 1, nil
		}
		r, err := strconv.ParseFloat(arg, 64)
		if err != nil || r < 0 || r > 1 {
			return 0, fmt.Errorf("%s=%q: the sampling ratio must be a number from 0 to 1, e.g. 0.1", EnvSamplerArg, arg)
		}
		return r, nil
	}
	switch strings.ToLower(name) {
	case "":
		return parentBased(sdktrace.AlwaysSample()), nil
	case "always_on":
		return sdktrace.AlwaysSample(), nil
	case "always_off":
		return sdktrace.NeverSample(), nil
	case "parentbased_always_on":
		return parentBased(sdktrace.AlwaysSample()), nil
	case "parentbased_always_off":
		return parentBased(sdktrace.NeverSample()), nil
	case "traceidratio":
		r, err := ratio()
		return sdktrace.TraceIDRatioBased(r), err
	case "parentbased_traceidratio":
		r, err := ratio()
		return parentBased(sdktrace.TraceIDRatioBased(r)), err
	}
	return nil, fmt.Errorf("%s=%q: use always_on, always_off, traceidratio, parentbased_always_on (the default), parentbased_always_off or parentbased_traceidratio", EnvSampler, name)
}

// parseResourceAttributes reads OTEL_RESOURCE_ATTRIBUTES: key=value pairs
// separated by commas, values percent-encoded.
func parseResourceAttributes(s string) ([]attribute.KeyValue, error) {
	if s == "" {
		return nil, nil
	}
	var attrs []attribute.KeyValue
	for _, pair := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(pair, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" {
			return nil, fmt.Errorf("%s: %q is not key=value; write key1=value1,key2=value2", EnvResourceAttributes, strings.TrimSpace(pair))
		}
		val, err := url.PathUnescape(strings.TrimSpace(v))
		if err != nil {
			return nil, fmt.Errorf("%s: the value of %q is not percent-encoded properly: %w", EnvResourceAttributes, k, err)
		}
		attrs = append(attrs, attribute.String(k, val))
	}
	return attrs, nil
}

// Provider is a running tracer provider: spans are batched and exported in
// the background until Shutdown.
type Provider struct {
	tp *sdktrace.TracerProvider
}

// New builds the provider cfg describes. It connects to nothing yet: the
// exporter connects when it first exports.
func New(ctx context.Context, cfg Config) (*Provider, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	exp := cfg.Exporter
	if exp == nil {
		var err error
		switch cfg.Protocol {
		case ProtocolGRPC:
			exp, err = otlptracegrpc.New(ctx, otlptracegrpc.WithEndpointURL(cfg.Endpoint))
		case ProtocolHTTPJSON:
			exp, err = otlptracehttp.New(ctx, otlptracehttp.WithEndpointURL(cfg.Endpoint), otlptracehttp.WithEncoding(otlptracehttp.EncodingJSON))
		default:
			exp, err = otlptracehttp.New(ctx, otlptracehttp.WithEndpointURL(cfg.Endpoint))
		}
		if err != nil {
			return nil, fmt.Errorf("tracing: OTLP exporter for %s: %w", cfg.Endpoint, err)
		}
	}
	name := cfg.ServiceName
	if name == "" {
		name = "hookbridge"
	}
	attrs := append([]attribute.KeyValue{}, cfg.Attributes...)
	attrs = append(attrs, semconv.ServiceName(name))
	if cfg.ServiceVersion != "" {
		attrs = append(attrs, semconv.ServiceVersion(cfg.ServiceVersion))
	}
	res, err := resource.New(ctx, resource.WithHost(), resource.WithTelemetrySDK(),
		resource.WithSchemaURL(semconv.SchemaURL), resource.WithAttributes(attrs...))
	if err != nil {
		return nil, fmt.Errorf("tracing: resource: %w", err)
	}
	var bopts []sdktrace.BatchSpanProcessorOption
	if cfg.BatchTimeout > 0 {
		bopts = append(bopts, sdktrace.WithBatchTimeout(cfg.BatchTimeout))
	}
	opts := []sdktrace.TracerProviderOption{sdktrace.WithBatcher(exp, bopts...), sdktrace.WithResource(res)}
	sampler := cfg.Sampler
	if sampler == nil {
		sampler = parentBased(sdktrace.AlwaysSample())
	}
	opts = append(opts, sdktrace.WithSampler(sampler))
	// The SDK reports export failures only to the process-wide handler.
	otel.SetErrorHandler(&errorLog{log: cfg.Logger})
	return &Provider{tp: sdktrace.NewTracerProvider(opts...)}, nil
}

// TracerProvider returns the provider to hand to instrumented packages.
func (p *Provider) TracerProvider() trace.TracerProvider { return p.tp }

// Shutdown exports the spans still buffered and stops the provider, within
// ctx.
func (p *Provider) Shutdown(ctx context.Context) error {
	if err := p.tp.Shutdown(ctx); err != nil {
		return fmt.Errorf("tracing: flush spans: %w", err)
	}
	return nil
}

// errorLogEvery bounds how often export failures are logged.
const errorLogEvery = time.Minute

// errorLog logs the SDK's errors at most once per errorLogEvery, counting
// those left out.
type errorLog struct {
	log     *slog.Logger
	mu      sync.Mutex
	last    time.Time
	dropped int
}

func (h *errorLog) Handle(err error) {
	h.mu.Lock()
	now := time.Now()
	if !h.last.IsZero() && now.Sub(h.last) < errorLogEvery {
		h.dropped++
		h.mu.Unlock()
		return
	}
	n := h.dropped
	h.last, h.dropped = now, 0
	h.mu.Unlock()
	h.log.Warn("tracing: exporting spans failed; spans that do not fit the export queue are dropped until the collector answers",
		"error", err, "failures_not_logged", n)
}
