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

// wireEvent is the structured-mode JSON layout of the context attributes,
// in the attribute order of the CloudEvents JSON format. Extensions and data
// are appended by MarshalJSON so that data comes last.
type wireEvent struct {
	SpecVersion     string `json:"specversion"`
	ID              string `json:"id"`
	Source          string `json:"source"`
	Type            string `json:"type"`
	Subject         string `json:"subject,omitempty"`
	Time            string `json:"time,omitempty"`
	DataContentType string `json:"datacontenttype,omitempty"`
	DataSchema      string `json:"dataschema,omitempty"`
	PartitionKey    string `json:"partitionkey,omitempty"`
	DataVersion     string `json:"dataversion,omitempty"`
	Received        string `json:"hookbridgereceived,omitempty"`
	Route           string `json:"hookbridgeroute,omitempty"`
	Verifier        string `json:"hookbridgeverifier,omitempty"`
}

// MarshalJSON encodes the event in the CloudEvents JSON format (structured
// mode). Extension attributes follow the known ones, sorted by name, and data
// comes last, so the encoding of an event is deterministic.
func (e *Event) MarshalJSON() ([]byte, error) {
	w := wireEvent{
		SpecVersion:     SpecVersion,
		ID:              e.ID,
		Source:          e.Source,
		Type:            e.Type,
		Subject:         e.Subject,
		Time:            e.Time,
		DataContentType: e.DataContentType,
		DataSchema:      e.DataSchema,
		PartitionKey:    e.PartitionKey,
		DataVersion:     e.DataVersion,
		Route:           e.Route,
		Verifier:        e.Verifier,
	}
	if !e.Received.IsZero() {
		w.Received = e.Received.UTC().Format(time.RFC3339Nano)
	}
	head, err := json.Marshal(&w)
	if err != nil {
		return nil, fmt.Errorf("encode event %q: %w", e.ID, err)
	}
	var buf bytes.Buffer
	buf.Grow(len(head) + len(e.Data) + len(e.DataBase64) + 48*len(e.Extensions) + 16)
	buf.Write(head[:len(head)-1]) // without the closing brace
	if len(e.Extensions) > 0 {
		names := make([]string, 0, len(e.Extensions))
		for name := range e.Extensions {
			names = append(names, name)
		}
		slices.Sort(names)
		for _, name := range names {
			v := e.Extensions[name]
			if !validExtensionName(name) || !validExtensionValue(v) {
				return nil, fmt.Errorf("encode event %q: extension %q must be named [a-z0-9] and hold a string, number or boolean", e.ID, name)
			}
			buf.WriteString(`,"`)
			buf.WriteString(name) // [a-z0-9]+: nothing to escape
			buf.WriteString(`":`)
			buf.Write(v)
		}
	}
	if len(e.Data) > 0 {
		buf.WriteString(`,"data":`)
		// Compacting validates too, and keeps one event on one line.
		if err := json.Compact(&buf, e.Data); err != nil {
			return nil, fmt.Errorf("encode event %q: data is not valid JSON: %w", e.ID, err)
		}
	}
	if e.DataBase64 != "" {
		b64, _ := json.Marshal(e.DataBase64) // a string always encodes
		buf.WriteString(`,"data_base64":`)
		buf.Write(b64)
	}
	buf.WriteByte('}')
	return buf.Bytes(), nil
}
