package main

import (
	"context"
	"net/url"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"

	"github.com/hookbridge/hookbridge/consumer"
	"github.com/hookbridge/hookbridge/internal/tracing"
)

// traceEndpointHelp describes --trace-endpoint.
const traceEndpointHelp = "export OpenTelemetry traces over OTLP to this collector URL, e.g. http://localhost:4318 (the standard OTEL_EXPORTER_OTLP_* variables turn tracing on too; this wins over their endpoint)"

// Service names a command's spans carry unless OTEL_SERVICE_NAME or
// OTEL_RESOURCE_ATTRIBUTES names one.
const (
	serviceIngress = "hookbridge-ingress"
	serviceWorker  = "hookbridge-worker"
	serviceDev     = "hookbridge"
)

// traceFlushTimeout bounds the export of the spans still buffered at exit,
// within shutdownMargin: a collector that does not answer costs their
// spans, never the shutdown.
const traceFlushTimeout = 800 * time.Millisecond

// addTracing adds tracing to h when the OpenTelemetry environment or
// --trace-endpoint turns it on: h.tp is then the tracer provider the parts
// trace with (nil leaves them untraced), and its last closer flushes the
// spans still buffered, after every other part has stopped. A setting it
// cannot honour is a usage error naming it.
func (h *host) addTracing(ctx context.Context, getenv env, endpoint, service string) error {
	cfg, on, err := tracing.FromEnv(getenv, endpoint, service)
	if err != nil {
		return usageError{err}
	}
	if !on {
		return nil
	}
	cfg.ServiceVersion, cfg.Logger = version, h.log
	p, err := tracing.New(ctx, cfg)
	if err != nil {
		return usageError{err}
	}
	h.tp = p.TracerProvider()
	h.closer(func() error {
		ctx, cancel := context.WithTimeout(context.Background(), traceFlushTimeout)
		defer cancel()
		if err := p.Shutdown(ctx); err != nil {
			h.log.Warn("tracing: spans still buffered at exit were not exported", "error", err)
		}
		return nil
	})
	h.log.Info("tracing on", "endpoint", consumer.Redact(cfg.Endpoint), "protocol", cfg.Protocol, "service", cfg.ServiceName)
	return nil
}

// traceQueue names the embedded queue in spans: its file.
func (q sqliteQueue) traceQueue() (string, []attribute.KeyValue) {
	return q.path, []attribute.KeyValue{semconv.MessagingSystemKey.String("sqlite"), semconv.MessagingDestinationName(q.path)}
}

// traceQueue names a Service Bus queue in spans: its name and namespace.
func (q serviceBusQueue) traceQueue() (string, []attribute.KeyValue) {
	attrs := []attribute.KeyValue{semconv.MessagingSystemServiceBus, semconv.MessagingDestinationName(q.name)}
	if q.namespace != "" {
		attrs = append(attrs, semconv.ServerAddress(q.namespace))
	}
	return q.name, attrs
}

// connectionStringHost is the host of a Service Bus connection string's
// Endpoint, "" when it has none.
func connectionStringHost(cs string) string {
	for _, part := range strings.Split(cs, ";") {
		k, v, ok := strings.Cut(part, "=")
		if ok && strings.EqualFold(strings.TrimSpace(k), "Endpoint") {
			if u, err := url.Parse(strings.TrimSpace(v)); err == nil {
				return u.Hostname()
			}
		}
	}
	return ""
}
