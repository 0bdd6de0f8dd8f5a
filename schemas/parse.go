package schemas

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// MaxEvents is the most events one body may hold: Event Grid's largest
// batch. A bigger body is refused whole, before any event is decoded: the
// elements are counted while the body is validated.
const MaxEvents = 5000

// Format is the envelope a body is parsed as.
type Format int

// Formats.
const (
	// FormatCallAutomation: a JSON array of CloudEvents, or one CloudEvent.
	FormatCallAutomation Format = iota + 1
	// FormatCloudEvent: CloudEvents structured mode, one JSON object.
	FormatCloudEvent
	// FormatCloudEventBatch: CloudEvents batch mode, a JSON array.
	FormatCloudEventBatch
	// FormatEventGrid: the Event Grid schema, a JSON array of events (a
	// single object is accepted too).
	FormatEventGrid
)

// ParseCallAutomation parses a Call Automation callback body: a JSON array of
// CloudEvents, or a single CloudEvent object. Every event is normalized and
// stamped with p. It is strict: the first event that breaks an envelope rule
// fails the whole body (see Parse for the lenient form the ingress uses).
func ParseCallAutomation(body []byte, p Provenance) ([]Event, error) {
	return parseStrict(body, FormatCallAutomation, p)
}

// ParseCloudEvent parses a CloudEvents structured-mode body: one JSON object.
func ParseCloudEvent(body []byte, p Provenance) ([]Event, error) {
	return parseStrict(body, FormatCloudEvent, p)
}

// ParseCloudEventBatch parses a CloudEvents batch-mode body: a JSON array.
func ParseCloudEventBatch(body []byte, p Provenance) ([]Event, error) {
	return parseStrict(body, FormatCloudEventBatch, p)
}

// ParseEventGrid parses an Event Grid schema body (a JSON array of events;
// a single object is accepted too) and maps each event to a CloudEvent the way
// Microsoft does: id→id, topic→source, eventType→type, subject→subject,
// eventTime→time, data→data, dataVersion→extension dataversion.
// metadataVersion and other envelope metadata are dropped.
func ParseEventGrid(body []byte, p Provenance) ([]Event, error) {
	return parseStrict(body, FormatEventGrid, p)
}

func parseStrict(body []byte, f Format, p Provenance) ([]Event, error) {
	var out Parsed
	if err := parse(body, f, p, &out, true); err != nil {
		return nil, err
	}
	if len(out.Events) == 0 {
		return nil, fmt.Errorf("%w: the array is empty", ErrNoEvents)
	}
	return out.Events, nil
}

// Parsed is what Parse found in a body: the events it normalized, and the
// elements that break an envelope rule no lenient rule repairs. A Parsed
// may be reused for another body after Reset.
type Parsed struct {
	Events    []Event
	Malformed []Malformed

	spans   []span   // scratch: element boundaries
	nesting []byte   // scratch: the scanner's stack
	members []member // scratch: one object's members
}

// Malformed is one element of a body that is not a valid event: kept as
// received so that nothing a verified sender posted is lost, with what could
// be read of its identity.
type Malformed struct {
	// Index is the element's position in the body (0 for a single object).
	Index int
	// Raw is the element exactly as received. It aliases the body.
	Raw []byte
	// Err says which rule the element broke: a *ParseError wrapping
	// ErrInvalidEvent or ErrMalformed.
	Err error
	// ID, Source and Type are the element's event id, source (Event Grid:
	// topic) and type (eventType) where they could be read as strings.
	ID, Source, Type string
	// PartitionKey is derived from the element's data as for events.
	PartitionKey string
}

// Reset empties p for reuse, keeping its memory.
func (p *Parsed) Reset() {
	clear(p.Events)
	clear(p.Malformed)
	p.Events, p.Malformed = p.Events[:0], p.Malformed[:0]
}

// Reject moves event i, which the caller refuses for reason (an envelope
// rule of its own, such as "a subscription-validation event inside a
// delivery"), to Malformed. Events after i move down by one.
func (p *Parsed) Reject(i int, reason string) {
	e := &p.Events[i]
	p.Malformed = append(p.Malformed, Malformed{
		Index:        e.index,
		Raw:          e.raw,
		Err:          &ParseError{Index: e.index, Reason: reason, Err: ErrInvalidEvent},
		ID:           e.ID,
		Source:       e.Source,
		Type:         e.Type,
		PartitionKey: e.PartitionKey,
	})
	copy(p.Events[i:], p.Events[i+1:])
	p.Events[len(p.Events)-1] = Event{}
	p.Events = p.Events[:len(p.Events)-1]
}

// Parse parses body as format f, leniently, into dst (which it resets): each
// element that is a valid event, or becomes one by the lenient rules below,
// is normalized into dst.Events and stamped with p; every other element goes
// to dst.Malformed with the rule it broke. Parse fails only when the body as
// a whole cannot be used: it is not JSON (ErrMalformed) or holds more than
// MaxEvents elements (ErrTooManyEvents). An empty array yields nothing.
//
// Lenient rules (the ingress applies them to verified senders, whose events
// must never be refused):
//   - An attribute name with upper-case ASCII letters is read lower-cased
//     (CloudEvents attribute names are lower-case), unless the event has
//     another attribute of that name: then the event is malformed.
//   - The shape is not enforced: an array where one event is expected is a
//     batch, an object where a batch is expected is a batch of one.
//   - A JSON value that is neither an object nor an array (a string, a
//     number, null) is one malformed element.
//
// Every element that holds invalid UTF-8, anywhere, is malformed: JSON text
// is UTF-8, and decoding would replace the bytes with U+FFFD, so two
// different ids could reach a backend as one.
func Parse(body []byte, f Format, p Provenance, dst *Parsed) error {
	return parse(body, f, p, dst, false)
}

// ParseNormalized decodes a normalized event, as written by MarshalJSON (a
// queue message body). Unlike the ingress parsers it keeps partitionkey and
// the provenance extensions.
func ParseNormalized(body []byte) (*Event, error) {
	var out Parsed
	if err := checkBody(body, nil); err != nil {
		return nil, err
	}
	raw := bytes.TrimSpace(body)
	if raw[0] != '{' {
		return nil, fmt.Errorf("%w: expected one JSON object (a normalized event)", ErrMalformed)
	}
	e := new(Event)
	if !utf8.Valid(raw) {
		return nil, &ParseError{Index: 0, Reason: invalidUTF8, Err: ErrMalformed}
	}
	out.members = members(raw, out.members[:0])
	if err := fromCloudEvent(0, out.members, e, true); err != nil {
		return nil, err
	}
	return e, nil
}

const invalidUTF8 = "contains invalid UTF-8 (JSON text must be UTF-8)"

type span struct{ start, end int }

// member is one member of a JSON object: its name (unescaped) and its raw
// value.
type member struct {
	name []byte
	raw  []byte
}

// checkBody reports whether body is one JSON value, explaining why not.
// sc, when not nil, records the elements of a top-level array.
func checkBody(body []byte, sc *scanner) error {
	if len(bytes.TrimLeft(body, " \t\r\n")) == 0 {
		return fmt.Errorf("%w: the body is empty; send a JSON object or array of events", ErrMalformed)
	}
	if sc == nil {
		sc = &scanner{}
	}
	sc.b = body
	if sc.scan() {
		return nil
	}
	switch c := bytes.TrimLeft(body, " \t\r\n")[0]; {
	case c != '[' && c != '{' && c != '"' && c != '-' && (c < '0' || c > '9') && c != 't' && c != 'f' && c != 'n':
		return fmt.Errorf("%w: expected a JSON object or array of events", ErrMalformed)
	}
	var v json.RawMessage
	err := json.Unmarshal(body, &v) // the slow path, for a precise message
	if err == nil {
		return fmt.Errorf("%w: invalid JSON", ErrMalformed)
	}
	return fmt.Errorf("%w: invalid JSON: %s", ErrMalformed, err.Error())
}

func parse(body []byte, f Format, p Provenance, dst *Parsed, strict bool) error {
	dst.Reset()
	sc := scanner{spans: dst.spans[:0], max: MaxEvents, stack: dst.nesting}
	err := checkBody(body, &sc)
	dst.spans, dst.nesting = sc.spans, sc.stack
	if err != nil {
		return err
	}
	// body is valid JSON from here on: the walkers below rely on it.
	i := skipSpace(body, 0)
	end := len(bytes.TrimRight(body, " \t\r\n"))
	switch body[i] {
	case '[':
		if strict && f == FormatCloudEvent {
			return fmt.Errorf("%w: expected one JSON object (structured mode); send a batch as application/cloudevents-batch+json", ErrMalformed)
		}
		if sc.count > MaxEvents {
			return fmt.Errorf("%w: %d events; at most %d are allowed in one request", ErrTooManyEvents, sc.count, MaxEvents)
		}
	case '{':
		if strict && f == FormatCloudEventBatch {
			return fmt.Errorf("%w: expected a JSON array (batch mode)", ErrMalformed)
		}
		dst.spans = append(dst.spans[:0], span{i, end})
	default:
		if strict {
			return fmt.Errorf("%w: expected a JSON object or array of events", ErrMalformed)
		}
		dst.spans = append(dst.spans[:0], span{i, end})
	}
	if cap(dst.Events) < len(dst.spans) {
		dst.Events = make([]Event, 0, len(dst.spans))
	}
	bodyUTF8 := utf8.Valid(body)
	for idx, sp := range dst.spans {
		raw := body[sp.start:sp.end]
		dst.Events = append(dst.Events, Event{})
		e := &dst.Events[len(dst.Events)-1]
		err := dst.element(idx, raw, f, bodyUTF8, strict, e)
		if err == nil {
			e.index, e.raw = idx, raw
			e.PartitionKey = PartitionKey(e.Data)
			p.apply(e)
			continue
		}
		if strict {
			dst.Events = dst.Events[:0]
			return err
		}
		*e = Event{}
		dst.Events = dst.Events[:len(dst.Events)-1]
		dst.Malformed = append(dst.Malformed, malformed(idx, raw, err, f))
	}
	return nil
}

// element decodes one element into e.
func (d *Parsed) element(idx int, raw []byte, f Format, bodyUTF8, strict bool, e *Event) error {
	if raw[0] != '{' {
		if raw[0] == 'n' {
			return &ParseError{Index: idx, Reason: "is null, not a JSON object", Err: ErrMalformed}
		}
		return &ParseError{Index: idx, Reason: "is not a JSON object", Err: ErrMalformed}
	}
	if !bodyUTF8 && !utf8.Valid(raw) {
		return &ParseError{Index: idx, Reason: invalidUTF8, Err: ErrMalformed}
	}
	d.members = members(raw, d.members[:0])
	if f == FormatEventGrid {
		return fromEventGrid(idx, d.members, e)
	}
	if !strict {
		if err := foldNames(idx, d.members); err != nil {
			return err
		}
	}
	return fromCloudEvent(idx, d.members, e, false)
}

// members appends the members of the object raw (valid JSON) to ms.
func members(raw []byte, ms []member) []member {
	objectMembers(raw, func(name, value []byte) bool {
		ms = append(ms, member{name: name, raw: value})
		return true
	})
	return ms
}

// malformed describes an element that is not a valid event, reading what it
// can of its identity.
func malformed(idx int, raw []byte, err error, f Format) Malformed {
	m := Malformed{Index: idx, Raw: raw, Err: err}
	if raw[0] != '{' {
		return m
	}
	idName, srcName, typeName := "id", "source", "type"
	if f == FormatEventGrid {
		srcName, typeName = "topic", "eventType"
	}
	objectMembers(raw, func(name, value []byte) bool {
		switch string(name) {
		case idName:
			m.ID = readableString(value)
		case srcName:
			m.Source = readableString(value)
		case typeName:
			m.Type = readableString(value)
		case "data":
			m.PartitionKey = ""
			if utf8.Valid(value) {
				m.PartitionKey = PartitionKey(value)
			}
		}
		return true
	})
	return m
}

// readableString decodes a JSON string holding valid UTF-8; anything else
// yields "".
func readableString(raw []byte) string {
	if len(raw) == 0 || raw[0] != '"' || !utf8.Valid(raw) {
		return ""
	}
	if s, ok := plainString(raw); ok {
		return s
	}
	s, _ := decodeString(raw)
	return s
}

// foldNames applies the lenient rule on attribute names: upper-case ASCII
// letters are lower-cased unless that makes two attributes share a name.
// Linear in the number of members, whatever their names.
func foldNames(idx int, ms []member) error {
	if !slices.ContainsFunc(ms, func(m member) bool { return hasUpper(m.name) }) {
		return nil
	}
	names := make(map[string]bool, len(ms))
	for _, m := range ms {
		if !hasUpper(m.name) {
			names[string(m.name)] = true
		}
	}
	for i := range ms {
		if !hasUpper(ms[i].name) {
			continue
		}
		lower := bytes.ToLower(ms[i].name)
		if names[string(lower)] {
			return invalid(idx, string(ms[i].name), fmt.Sprintf("differs only in case from attribute %q", lower))
		}
		names[string(lower)] = true
		ms[i].name = lower
	}
	return nil
}

func hasUpper(b []byte) bool {
	for _, c := range b {
		if 'A' <= c && c <= 'Z' {
			return true
		}
	}
	return false
}

// fromEventGrid fills e from the members of one Event Grid event.
func fromEventGrid(idx int, ms []member, e *Event) error {
	var id, topic, eventType, subject, eventTime, dataVersion, data []byte
	for _, m := range ms {
		switch string(m.name) {
		case "id":
			id = m.raw
		case "topic":
			topic = m.raw
		case "eventType":
			eventType = m.raw
		case "subject":
			subject = m.raw
		case "eventTime":
			eventTime = m.raw
		case "dataVersion":
			dataVersion = m.raw
		case "data":
			data = m.raw
		}
	}
	fields := []struct {
		name     string
		raw      []byte
		dst      *string
		required bool
	}{
		{"id", id, &e.ID, true},
		{"topic", topic, &e.Source, true},
		{"eventType", eventType, &e.Type, true},
		{"subject", subject, &e.Subject, false},
		{"eventTime", eventTime, &e.Time, false},
		{"dataVersion", dataVersion, &e.DataVersion, false},
	}
	var strs strArena
	for _, f := range fields {
		if err := strs.attr(idx, f.name, f.raw, f.required, f.dst); err != nil {
			return err
		}
	}
	strs.flush()
	if err := checkTime(idx, "eventTime", e.Time); err != nil {
		return err
	}
	if data != nil && !isNull(data) {
		e.setParsedData(data)
	}
	return nil
}

// fromCloudEvent fills e from the members of one CloudEvent. With
// normalized set, partitionkey and the provenance extensions are read too;
// otherwise they are ignored, since only the ingress sets them. A member
// that appears more than once counts with its last value, as in
// encoding/json.
func fromCloudEvent(idx int, ms []member, e *Event, normalized bool) error {
	var specversion []byte
	var seenID, seenSource, seenType bool
	for _, m := range ms {
		if string(m.name) == "specversion" {
			specversion = m.raw
		}
	}
	if string(specversion) != `"`+SpecVersion+`"` {
		sv, err := stringAttr(idx, "specversion", specversion, true)
		if err != nil {
			return err
		}
		if sv != SpecVersion {
			return invalid(idx, "specversion", fmt.Sprintf("is %q; only %q is supported", sv, SpecVersion))
		}
	}
	var strs strArena
	for _, m := range ms {
		var dst *string
		var attr string // the attribute's name, a constant: no allocation
		required := false
		switch string(m.name) {
		case "specversion":
			continue
		case "id":
			dst, attr, required, seenID = &e.ID, "id", true, true
		case "source":
			dst, attr, required, seenSource = &e.Source, "source", true, true
		case "type":
			dst, attr, required, seenType = &e.Type, "type", true, true
		case "subject":
			dst, attr = &e.Subject, "subject"
		case "time":
			dst, attr = &e.Time, "time"
		case "datacontenttype":
			dst, attr = &e.DataContentType, "datacontenttype"
		case "dataschema":
			dst, attr = &e.DataSchema, "dataschema"
		case "data_base64":
			dst, attr = &e.DataBase64, "data_base64"
		case ExtDataVersion:
			dst, attr = &e.DataVersion, ExtDataVersion
		case "data":
			e.Data, e.parsedData = nil, nil
			if !isNull(m.raw) {
				e.setParsedData(m.raw)
			}
			continue
		case ExtPartitionKey:
			if !normalized {
				continue // derived from data, never taken from a sender
			}
			dst, attr = &e.PartitionKey, ExtPartitionKey
		case ExtRoute:
			if !normalized {
				continue // provenance is the ingress's to set
			}
			dst, attr = &e.Route, ExtRoute
		case ExtVerifier:
			if !normalized {
				continue
			}
			dst, attr = &e.Verifier, ExtVerifier
		case ExtReceived:
			if !normalized {
				continue
			}
			s, err := stringAttr(idx, ExtReceived, m.raw, false)
			if err != nil {
				return err
			}
			if e.Received, err = time.Parse(time.RFC3339Nano, s); err != nil {
				return invalid(idx, ExtReceived, "is not an RFC 3339 timestamp")
			}
			continue
		default:
			name := string(m.name)
			if !validExtensionName(name) {
				return invalid(idx, name, "is not a valid CloudEvents attribute name (lower-case letters and digits only)")
			}
			if isNull(m.raw) {
				delete(e.Extensions, name)
				continue
			}
			if !validExtensionValue(m.raw) {
				return invalid(idx, name, "must be a string, number or boolean")
			}
			if e.Extensions == nil {
				e.Extensions = make(map[string]json.RawMessage)
			}
			e.Extensions[name] = m.raw
			continue
		}
		if err := strs.attr(idx, attr, m.raw, required, dst); err != nil {
			return err
		}
	}
	strs.flush()
	switch {
	case !seenID:
		return invalid(idx, "id", "is required")
	case !seenSource:
		return invalid(idx, "source", "is required")
	case !seenType:
		return invalid(idx, "type", "is required")
	}
	if e.Data != nil && e.DataBase64 != "" {
		return invalid(idx, "data_base64", "cannot be combined with data")
	}
	return checkTime(idx, "time", e.Time)
}

// strArena gathers the plain (unescaped) string attributes of one event
// and copies them out of the body into one allocation, which they share:
// an event's strings live and die together.
type strArena struct {
	n    int
	size int
	p    [16]struct {
		dst   *string
		inner []byte
	}
}

// attr reads a string attribute into *dst (see stringAttr): a plain string
// is set by flush, anything else at once.
func (a *strArena) attr(idx int, name string, raw []byte, required bool, dst *string) error {
	if inner, ok := plainInner(raw); ok && a.n < len(a.p) {
		if required && len(inner) == 0 {
			return invalid(idx, name, "must not be empty")
		}
		a.p[a.n].dst, a.p[a.n].inner = dst, inner
		a.n++
		a.size += len(inner)
		return nil
	}
	s, err := stringAttr(idx, name, raw, required)
	if err != nil {
		return err
	}
	// A later value of a repeated attribute wins over an earlier one still
	// pending in the arena.
	for i := range a.n {
		if a.p[i].dst == dst {
			a.p[i].dst = nil
		}
	}
	*dst = s
	return nil
}

// flush sets the gathered strings, in order, so the last of repeated
// attributes wins.
func (a *strArena) flush() {
	if a.n == 0 {
		return
	}
	var b strings.Builder
	b.Grow(a.size)
	for i := range a.n {
		b.Write(a.p[i].inner)
	}
	all := b.String()
	off := 0
	for i := range a.n {
		l := len(a.p[i].inner)
		if a.p[i].dst != nil {
			*a.p[i].dst = all[off : off+l]
		}
		off += l
	}
}

// stringAttr reads a string attribute from its raw value (nil when absent).
// A required one must be present and non-empty; an optional one may be
// absent or null.
func stringAttr(idx int, name string, raw []byte, required bool) (string, error) {
	if raw == nil || isNull(raw) {
		if required {
			return "", invalid(idx, name, "is required")
		}
		return "", nil
	}
	s, ok := plainString(raw)
	if !ok {
		if raw[0] != '"' {
			return "", invalid(idx, name, "must be a string")
		}
		if s, ok = decodeString(raw); !ok {
			return "", invalid(idx, name, "must be a string")
		}
	}
	if required && s == "" {
		return "", invalid(idx, name, "must not be empty")
	}
	return s, nil
}

// plainString decodes a JSON string without escapes, the common case,
// without reflection.
func plainString(raw []byte) (string, bool) {
	inner, ok := plainInner(raw)
	if !ok {
		return "", false
	}
	return string(inner), true
}

// plainInner returns the text of a JSON string without escapes.
func plainInner(raw []byte) ([]byte, bool) {
	if len(raw) < 2 || raw[0] != '"' || raw[len(raw)-1] != '"' {
		return nil, false
	}
	inner := raw[1 : len(raw)-1]
	if bytes.IndexByte(inner, '\\') >= 0 || bytes.IndexByte(inner, '"') >= 0 || !utf8.Valid(inner) {
		return nil, false
	}
	return inner, true
}

func checkTime(idx int, name, value string) error {
	if value == "" {
		return nil
	}
	if _, err := time.Parse(time.RFC3339Nano, value); err != nil {
		return invalid(idx, name, "is not an RFC 3339 timestamp")
	}
	return nil
}

func isNull(raw []byte) bool {
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
// so all of a call's events share one key and are delivered in order. Member
// names are read as encoding/json reads them (escapes decoded, the last of
// repeated names wins). data must be valid JSON.
func PartitionKey(data json.RawMessage) string {
	var corr, conn string
	objectMembers(data, func(key, v []byte) bool {
		switch string(key) {
		case "correlationId":
			corr = stringValue(v)
		case "callConnectionId":
			conn = stringValue(v)
		}
		return true
	})
	if corr != "" {
		return corr
	}
	return conn
}

// stringValue decodes raw if it is a JSON string, as encoding/json would
// into a string (null and other values: "").
func stringValue(raw []byte) string {
	if s, ok := plainString(raw); ok {
		return s
	}
	if len(raw) == 0 || raw[0] != '"' {
		return ""
	}
	s, _ := decodeString(raw)
	return s
}
