// Package schemas defines hookbridge's normalized event and the parsers that
// produce it from what senders post.
//
// Every event hookbridge accepts becomes one CloudEvents 1.0 event (Event),
// encoded in structured JSON mode (Event.MarshalJSON) as the body of a queue
// message and of every delivery to a backend. Its JSON Schema is EventSchema.
//
// Parsers (all of them treat their input as untrusted):
//   - ParseCallAutomation: Call Automation callbacks, a JSON array of
//     CloudEvents or a single one;
//   - ParseCloudEvent and ParseCloudEventBatch: CloudEvents structured and
//     batch mode, as Event Grid sends them with the CloudEvents schema;
//   - ParseEventGrid: the Event Grid schema, mapped to CloudEvents attributes
//     the way Microsoft maps them;
//   - ParseNormalized: a normalized event read back from a queue.
//
// A parser returns all events of a body or none: an error wraps one of the
// sentinels in errors.go, and a *ParseError names the event and attribute.
//
// Attributes the ingress adds:
//   - partitionkey (CloudEvents partitioning extension): the call's
//     data.correlationId, else data.callConnectionId, else absent. Every event of
//     one call, IncomingCall included, shares it; queues use it to keep a call's
//     events in order.
//   - dataversion: Event Grid's dataVersion.
//   - hookbridgereceived, hookbridgeroute, hookbridgeverifier (provenance):
//     when the request was accepted, on which route, and which verifiers
//     accepted it. A sender cannot set them, nor partitionkey: the parsers
//     ignore those attributes in the input.
//
// Unknown event types and unknown extension attributes pass through unchanged.
package schemas
