package schemas

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"
	"unicode/utf8"
)

// MaxEvents is the most events one body may hold: Event Grid's largest
// batch. A bigger body is refused whole.
const MaxEvents = 5000

// ParseCallAutomation parses a Call Automation callback body: a JSON array of
// CloudEvents, or a single CloudEvent object. Every event is normalized and
// stamped with p.
func ParseCallAutomation(body []byte, p Provenance) ([]Event, error) {
	return parseCloudEvents(body, p, shapeEither)
}

// ParseCloudEvent parses a CloudEvents structured-mode body: one JSON object.
func ParseCloudEvent(body []byte, p Provenance) ([]Event, error) {
	return parseCloudEvents(body, p, shapeObject)
}

// ParseCloudEventBatch parses a CloudEvents batch-mode body: a JSON array.
func ParseCloudEventBatch(body []byte, p Provenance) ([]Event, error) {
	return parseCloudEvents(body, p, shapeArray)
}

// ParseEventGrid parses an Event Grid schema body (a JSON array of events;
// a single object is accepted too) and maps each event to a CloudEvent the way
// Microsoft does: id→id, topic→source, eventType→type, subject→subject,
// eventTime→time, data→data, dataVersion→extension dataversion.
// metadataVersion is envelope metadata and is dropped.
func ParseEventGrid(body []byte, p Provenance) ([]Event, error) {
	objs, err := split(body, shapeEither)
	if err != nil {
		return nil, err
	}
	events := make([]Event, len(objs))
	for i, attrs := range objs {
		e := &events[i]
		fields := []struct {
			name     string
			dst      *string
			required bool
		}{
			{"id", &e.ID, true},
			{"topic", &e.Source, true},
			{"eventType", &e.Type, true},
			{"subject", &e.Subject, false},
			{"eventTime", &e.Time, false},
			{"dataVersion", &e.DataVersion, false},
		}
		for _, f := range fields {
			if *f.dst, err = stringAttr(i, attrs, f.name, f.required); err != nil {
				return nil, err
			}
		}
		if err := checkTime(i, "eventTime", e.Time); err != nil {
			return nil, err
		}
		if d, ok := attrs["data"]; ok && !isNull(d) {
			e.setParsedData(d)
		}
		e.PartitionKey = PartitionKey(e.Data)
		p.apply(e)
	}
	return events, nil
}

// ParseNormalized decodes a normalized event, as written by MarshalJSON (a
// queue message body). Unlike the ingress parsers it keeps partitionkey and
// the provenance extensions.
func ParseNormalized(body []byte) (*Event, error) {
	objs, err := split(body, shapeObject)
	if err != nil {
		return nil, err
	}
	attrs := objs[0]
	e := new(Event)
	if err := fromCloudEvent(0, attrs, e, true); err != nil {
		return nil, err
	}
	return e, nil
}

type shape int

const (
	shapeEither shape = iota
	shapeObject
	shapeArray
)

func parseCloudEvents(body []byte, p Provenance, s shape) ([]Event, error) {
	objs, err := split(body, s)
	if err != nil {
		return nil, err
	}
	events := make([]Event, len(objs))
	for i, attrs := range objs {
		if err := fromCloudEvent(i, attrs, &events[i], false); err != nil {
			return nil, err
		}
		events[i].PartitionKey = PartitionKey(events[i].Data)
		p.apply(&events[i])
	}
	return events, nil
}

// split returns the top-level objects of body: the elements of an array, or
// the object itself, each decoded into its attributes.
func split(body []byte, s shape) ([]map[string]json.RawMessage, error) {
	trimmed := bytes.TrimLeft(body, " \t\r\n")
	if len(trimmed) == 0 {
		return nil, fmt.Errorf("%w: the body is empty; send a JSON object or array of events", ErrMalformed)
	}
	switch trimmed[0] {
	case '[':
		if s == shapeObject {
			return nil, fmt.Errorf("%w: expected one JSON object (structured mode); send a batch as application/cloudevents-batch+json", ErrMalformed)
		}
		var objs []map[string]json.RawMessage
		if err := json.Unmarshal(body, &objs); err != nil {
			return nil, arrayError(body)
		}
		if len(objs) == 0 {
			return nil, fmt.Errorf("%w: the array is empty", ErrNoEvents)
		}
		if len(objs) > MaxEvents {
			return nil, fmt.Errorf("%w: %d events, at most %d allowed", ErrTooManyEvents, len(objs), MaxEvents)
		}
		for i, o := range objs {
			if o == nil { // a JSON null element
				return nil, &ParseError{Index: i, Reason: "is not a JSON object", Err: ErrMalformed}
			}
		}
		return objs, nil
	case '{':
		if s == shapeArray {
			return nil, fmt.Errorf("%w: expected a JSON array (batch mode)", ErrMalformed)
		}
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(body, &obj); err != nil {
			return nil, fmt.Errorf("%w: %s", ErrMalformed, jsonErrorText(err))
		}
		return []map[string]json.RawMessage{obj}, nil
	default:
		return nil, fmt.Errorf("%w: expected a JSON object or array of events", ErrMalformed)
	}
}

// arrayError explains why body, which starts like an array, did not decode
// into objects: the fast path failed, so decode again element by element
// for a precise message.
func arrayError(body []byte) error {
	var raws []json.RawMessage
	if err := json.Unmarshal(body, &raws); err != nil {
		return fmt.Errorf("%w: %s", ErrMalformed, jsonErrorText(err))
	}
	for i, raw := range raws {
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(raw, &obj); err != nil || obj == nil {
			return &ParseError{Index: i, Reason: "is not a JSON object", Err: ErrMalformed}
		}
	}
	return fmt.Errorf("%w: invalid JSON", ErrMalformed)
}

func jsonErrorText(err error) string {
	if err == nil {
		return "invalid JSON"
	}
	return "invalid JSON: " + err.Error()
}

// fromCloudEvent fills e from the attributes of one CloudEvent. With
// normalized set, partitionkey and the provenance extensions are read too;
// otherwise they are ignored, since only the ingress sets them.
func fromCloudEvent(i int, attrs map[string]json.RawMessage, e *Event, normalized bool) error {
	sv, err := stringAttr(i, attrs, "specversion", true)
	if err != nil {
		return err
	}
	if sv != SpecVersion {
		return invalid(i, "specversion", fmt.Sprintf("is %q; only %q is supported", sv, SpecVersion))
	}
	for name, raw := range attrs {
		var dst *string
		required := false
		switch name {
		case "specversion":
			continue
		case "id":
			dst, required = &e.ID, true
		case "source":
			dst, required = &e.Source, true
		case "type":
			dst, required = &e.Type, true
		case "subject":
			dst = &e.Subject
		case "time":
			dst = &e.Time
		case "datacontenttype":
			dst = &e.DataContentType
		case "dataschema":
			dst = &e.DataSchema
		case "data_base64":
			dst = &e.DataBase64
		case ExtDataVersion:
			dst = &e.DataVersion
		case "data":
			if !isNull(raw) {
				e.setParsedData(raw)
			}
			continue
		case ExtPartitionKey:
			if normalized {
				dst = &e.PartitionKey
				break
			}
			continue // derived from data, never taken from a sender
		case ExtRoute, ExtVerifier:
			if !normalized {
				continue // provenance is the ingress's to set
			}
			if name == ExtRoute {
				dst = &e.Route
			} else {
				dst = &e.Verifier
			}
		case ExtReceived:
			if !normalized {
				continue
			}
			s, err := stringAttr(i, attrs, name, false)
			if err != nil {
				return err
			}
			if e.Received, err = time.Parse(time.RFC3339Nano, s); err != nil {
				return invalid(i, name, "is not an RFC 3339 timestamp")
			}
			continue
		default:
			if !validExtensionName(name) {
				return invalid(i, name, "is not a valid CloudEvents attribute name (lower-case letters and digits only)")
			}
			if isNull(raw) {
				continue
			}
			if !validExtensionValue(raw) {
				return invalid(i, name, "must be a string, number or boolean")
			}
			if e.Extensions == nil {
				e.Extensions = make(map[string]json.RawMessage)
			}
			e.Extensions[name] = raw
			continue
		}
		if *dst, err = stringAttr(i, attrs, name, required); err != nil {
			return err
		}
	}
	for _, name := range []string{"id", "source", "type"} {
		if _, ok := attrs[name]; !ok {
			return invalid(i, name, "is required")
		}
	}
	if e.Data != nil && e.DataBase64 != "" {
		return invalid(i, "data_base64", "cannot be combined with data")
	}
	return checkTime(i, "time", e.Time)
}

// stringAttr reads a string attribute. A required one must be present and
// non-empty; an optional one may be absent or null.
func stringAttr(i int, attrs map[string]json.RawMessage, name string, required bool) (string, error) {
	raw, ok := attrs[name]
	if !ok || isNull(raw) {
		if required {
			return "", invalid(i, name, "is required")
		}
		return "", nil
	}
	s, ok := plainString(raw)
	if !ok {
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", invalid(i, name, "must be a string")
		}
	}
	if required && s == "" {
		return "", invalid(i, name, "must not be empty")
	}
	return s, nil
}

// plainString decodes a JSON string without escapes, the common case,
// without reflection.
func plainString(raw json.RawMessage) (string, bool) {
	if len(raw) < 2 || raw[0] != '"' || raw[len(raw)-1] != '"' {
		return "", false
	}
	inner := raw[1 : len(raw)-1]
	if bytes.IndexByte(inner, '\\') >= 0 || bytes.IndexByte(inner, '"') >= 0 || !utf8.Valid(inner) {
		return "", false
	}
	return string(inner), true
}

func checkTime(i int, name, value string) error {
	if value == "" {
		return nil
	}
	if _, err := time.Parse(time.RFC3339Nano, value); err != nil {
		return invalid(i, name, "is not an RFC 3339 timestamp")
	}
	return nil
}

func isNull(raw json.RawMessage) bool {
	return string(bytes.TrimSpace(raw)) == "null"
}

// validExtensionName reports whether name is a CloudEvents attribute name:
// lower-case ASCII letters and digits.
func validExtensionName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}

// validExtensionValue reports whether raw is a JSON string, number or boolean.
func validExtensionValue(raw json.RawMessage) bool {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return false
	}
	switch raw[0] {
	case '{', '[', 'n':
		return false
	}
	return json.Valid(raw)
}

// PartitionKey derives the partition key of an event from its data: the
// call's correlationId, else its callConnectionId, else "" (no key). Every
// event of one call, IncomingCall included, carries the same correlationId,
// so all of a call's events share one key and are delivered in order. data
// must be valid JSON.
func PartitionKey(data json.RawMessage) string {
	var corr, conn string
	objectStrings(data, func(key []byte, v string) bool {
		switch string(key) {
		case "correlationId":
			corr = v
		case "callConnectionId":
			conn = v
		}
		return true
	})
	if corr != "" {
		return corr
	}
	return conn
}
