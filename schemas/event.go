package schemas

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"time"
)

// SpecVersion is the only CloudEvents version hookbridge reads and writes.
const SpecVersion = "1.0"

// ContentType is the media type of a normalized event in structured mode.
const ContentType = "application/cloudevents+json; charset=utf-8"

// Extension attribute names. The provenance extensions are set by the ingress
// and can never be supplied by a sender: an input carrying one of them has it
// overwritten.
const (
	// ExtPartitionKey is the CloudEvents partitioning extension: the call the
	// event belongs to (see PartitionKey).
	ExtPartitionKey = "partitionkey"
	// ExtDataVersion carries Event Grid's dataVersion.
	ExtDataVersion = "dataversion"
	// ExtReceived is when the ingress accepted the request (RFC 3339, UTC).
	ExtReceived = "hookbridgereceived"
	// ExtRoute is the ingress route the event arrived on (see Route*).
	ExtRoute = "hookbridgeroute"
	// ExtVerifier names the verifiers that accepted the request, joined by
	// "+" when a route requires several (for example "acs-jwt+api-key").
	ExtVerifier = "hookbridgeverifier"
)

// Routes, as recorded in ExtRoute.
const (
	RouteACSCallbacks = "acs-callbacks"
	RouteEventGrid    = "eventgrid"
)

// Event is one normalized CloudEvent 1.0. The context attributes and data are
// kept from the input; Extensions holds any other extension attributes of the
// input, passed through unchanged.
//
// The zero value is not a valid event; events come from the parsers in this
// package or from ParseNormalized.
type Event struct {
	ID              string
	Source          string
	Type            string
	Subject         string
	Time            string // RFC 3339, as received; empty when absent
	DataContentType string
	DataSchema      string
	// Data is the JSON value of "data", verbatim; nil when absent.
	Data json.RawMessage
	// DataBase64 is "data_base64" for binary data, verbatim; empty when absent.
	DataBase64 string

	PartitionKey string
	DataVersion  string

	Received time.Time
	Route    string
	Verifier string

	// Extensions are further extension attributes by name, each a JSON
	// string, number or boolean.
	Extensions map[string]json.RawMessage

	// parsedData is Data as a parser validated it; while Data is still
	// that slice, MarshalJSON need not validate it again.
	parsedData json.RawMessage
	// index and raw are the event's position in the body it was parsed
	// from and its text there, for Parsed.Reject.
	index int
	raw   []byte
}

// setParsedData sets Data to raw, which encoding/json has decoded.
func (e *Event) setParsedData(raw json.RawMessage) {
	e.Data = raw
	e.parsedData = raw
}

// dataTrusted reports whether Data is the validated slice a parser set.
func (e *Event) dataTrusted() bool {
	return len(e.Data) > 0 && len(e.Data) == len(e.parsedData) && &e.Data[0] == &e.parsedData[0]
}

// Provenance is what the ingress knows about a request, stamped on every
// event it yields.
type Provenance struct {
	Received time.Time
	Route    string
	Verifier string
}

func (p Provenance) apply(e *Event) {
	e.Received = p.Received.UTC()
	e.Route = p.Route
	e.Verifier = p.Verifier
}

// MarshalJSON encodes the event in the CloudEvents JSON format (structured
// mode): the context attributes in the format's order, then the extensions
// sorted by name, then data, so the encoding of an event is deterministic.
// Data is compacted, so an event is always one line.
func (e *Event) MarshalJSON() ([]byte, error) {
	b := make([]byte, 0, e.encodedSize())
	b = append(b, `{"specversion":"`+SpecVersion+`"`...)
	attr := func(name, v string) {
		if v != "" {
			b = append(b, ',', '"')
			b = append(b, name...)
			b = append(b, '"', ':')
			b = appendString(b, v)
		}
	}
	b = append(b, `,"id":`...)
	b = appendString(b, e.ID)
	b = append(b, `,"source":`...)
	b = appendString(b, e.Source)
	b = append(b, `,"type":`...)
	b = appendString(b, e.Type)
	attr("subject", e.Subject)
	attr("time", e.Time)
	attr("datacontenttype", e.DataContentType)
	attr("dataschema", e.DataSchema)
	attr(ExtPartitionKey, e.PartitionKey)
	attr(ExtDataVersion, e.DataVersion)
	if !e.Received.IsZero() {
		b = append(b, `,"`+ExtReceived+`":"`...)
		b = e.Received.UTC().AppendFormat(b, time.RFC3339Nano)
		b = append(b, '"')
	}
	attr(ExtRoute, e.Route)
	attr(ExtVerifier, e.Verifier)
	if len(e.Extensions) > 0 {
		var few [8]string // the names of a usual event's extensions, on the stack
		names := few[:0]
		for name := range e.Extensions {
			names = append(names, name)
		}
		slices.Sort(names)
		for _, name := range names {
			v := e.Extensions[name]
			if !validExtensionName(name) || !validExtensionValue(v) {
				return nil, fmt.Errorf("encode event %q: extension %q must be named [a-z0-9] and hold a string, number or boolean", e.ID, name)
			}
			b = append(b, ',', '"')
			b = append(b, name...) // [a-z0-9]+: nothing to escape
			b = append(b, '"', ':')
			b = append(b, bytes.TrimSpace(v)...)
		}
	}
	if len(e.Data) > 0 {
		b = append(b, `,"data":`...)
		if e.dataTrusted() {
			if bytes.IndexByte(e.Data, '\n') < 0 && bytes.IndexByte(e.Data, '\r') < 0 {
				b = append(b, e.Data...) // valid, and already one line
			} else {
				b = appendCompact(b, e.Data) // valid: only whitespace to drop
			}
			return e.finish(b), nil
		}
		// Compacting validates too, and keeps one event on one line.
		buf := bytes.NewBuffer(b)
		if err := json.Compact(buf, e.Data); err != nil {
			return nil, fmt.Errorf("encode event %q: data is not valid JSON: %w", e.ID, err)
		}
		b = buf.Bytes()
	}
	return e.finish(b), nil
}

// encodedSize is about the length of the encoded event: its attributes'
// names and quotes (256 is more than all of them take), their values, the
// extensions and the data. Escapes and whitespace make the true length
// differ a little; an Event Grid event's resource paths make it well over
// a fixed guess, and a guess too small copies the whole event again.
func (e *Event) encodedSize() int {
	n := 256 + len(time.RFC3339Nano) + len(e.ID) + len(e.Source) + len(e.Type) + len(e.Subject) + len(e.Time) +
		len(e.DataContentType) + len(e.DataSchema) + len(e.PartitionKey) + len(e.DataVersion) +
		len(e.Route) + len(e.Verifier) + len(e.Data) + len(e.DataBase64)
	for name, v := range e.Extensions {
		n += len(name) + len(v) + 4
	}
	return n
}

// finish appends what follows data.
func (e *Event) finish(b []byte) []byte {
	if e.DataBase64 != "" {
		b = append(b, `,"data_base64":`...)
		b = appendString(b, e.DataBase64)
	}
	return append(b, '}')
}
