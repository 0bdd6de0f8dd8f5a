// Package schemas defines hookbridge's normalized event and the parsers that
// produce it from what senders post.
//
// Every event hookbridge accepts becomes one CloudEvents 1.0 event (Event),
// encoded in structured JSON mode (Event.MarshalJSON) as the body of a queue
// message and of every delivery to a backend. Its JSON Schema is EventSchema.
//
// Parsers (all of them treat their input as untrusted, and read each body in
// one pass: encoding/json validates it, then a scanner finds the elements
// and members without decoding into maps):
//   - Parse, the lenient parser the ingress uses for verified senders, whose
//     events must never be refused: it normalizes every element that is a
//     valid event, or becomes one by a lenient rule, into Parsed.Events, and
//     returns every other element as received in Parsed.Malformed with the
//     rule it broke (the ingress stores those in the dead-letter queue). It
//     fails only when the body as a whole cannot be used: not JSON
//     (ErrMalformed) or more than MaxEvents elements (ErrTooManyEvents,
//     found by counting, before anything is decoded). Formats:
//     FormatCallAutomation, FormatCloudEvent, FormatCloudEventBatch,
//     FormatEventGrid.
//   - ParseCallAutomation: Call Automation callbacks, a JSON array of
//     CloudEvents or a single one;
//   - ParseCloudEvent and ParseCloudEventBatch: CloudEvents structured and
//     batch mode, as Event Grid sends them with the CloudEvents schema;
//   - ParseEventGrid: the Event Grid schema, mapped to CloudEvents attributes
//     the way Microsoft maps them;
//   - ParseNormalized: a normalized event read back from a queue.
//
// The Parse* functions are strict: they return all events of a body or
// none, and an error wraps one of the sentinels in errors.go, with a
// *ParseError naming the event and attribute.
//
// Lenient rules (Parse only):
//   - an attribute name with upper-case ASCII letters is read lower-cased,
//     unless the event also has an attribute of the lower-cased name (then
//     it is malformed);
//   - the shape is not enforced: an array where one event is expected is a
//     batch, an object where a batch is expected a batch of one;
//   - a JSON value that is neither an object nor an array is one malformed
//     element, as is a null element.
//
// Everywhere: null attributes are absent; a repeated member counts with its
// last value, as in encoding/json; member names are unescaped as
// encoding/json unescapes them; and an element holding invalid UTF-8,
// anywhere, is never normalized (JSON text is UTF-8, and replacing the bytes
// with U+FFFD could make two ids one): Parse returns it as malformed, the
// strict parsers refuse it with ErrMalformed.
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
