// Package tracing sets up OpenTelemetry tracing for hookbridge's commands:
// an SDK tracer provider exporting spans over OTLP (HTTP with protobuf or
// JSON, or gRPC) in the background, configured from the standard OTEL_*
// environment variables and the command's --trace-endpoint flag, and shut
// down (flushed) when the command ends.
//
// Tracing is off unless the environment names an OTLP endpoint
// (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT), sets
// OTEL_TRACES_EXPORTER=otlp, or the flag is given; OTEL_SDK_DISABLED=true
// and OTEL_TRACES_EXPORTER=none turn it off whatever else is set. FromEnv
// reads, through the getenv it is given, the variables that decide what is
// traced and where it goes: the endpoints, protocol, sampler, service name
// and resource attributes (and the batch processor's delay), and refuses a
// value it cannot honour with an error naming the variable. The exporter's
// connection details (OTEL_EXPORTER_OTLP_HEADERS, _CERTIFICATE,
// _CLIENT_KEY, _CLIENT_CERTIFICATE, _COMPRESSION, _TIMEOUT and their
// _TRACES_ forms) are read by the SDK itself from the process environment,
// as it documents; headers often carry credentials, and they never pass
// through hookbridge's logs. FromEnv checks only the headers' format (the
// SDK would log a malformed pair whole) and the batch queue's sizes (the
// SDK allocates the queue at start), refusing a bad value without showing
// a header's text.
//
// Off, nothing is built: the instrumented packages (ingress, relay,
// consumer) take a nil trace.TracerProvider as "off" and pay one nil check
// per request. The trace context crosses the queue inside each message
// (relay.SetTraceContext, relay.TraceContext: the W3C traceparent and
// tracestate application properties and Diagnostic-Id), so those packages
// need only the OpenTelemetry API, never this SDK setup.
//
// Export failures are logged through the logger of Config, at most once a
// minute with a count of those left out: an unreachable collector never
// fills the log, never blocks a request (spans beyond the batch queue are
// dropped) and never fails a shutdown.
package tracing
