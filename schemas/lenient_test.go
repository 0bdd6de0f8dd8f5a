package schemas_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/hookbridge/hookbridge/schemas"
)

// TestParseLenientDeadLettersWhatItCannotRepair feeds bodies whose every
// element but one breaks an envelope rule: the good event is always
// normalized, and each bad element comes back as Malformed, as received,
// with the rule it broke and what could be read of its identity.
func TestParseLenientDeadLettersWhatItCannotRepair(t *testing.T) {
	t.Parallel()
	const good = `{"specversion":"1.0","id":"ok","source":"s","type":"t","data":{"correlationId":"k0"}}`
	tests := []struct {
		name   string
		format schemas.Format
		bad    string
		rule   string
		id     string
		key    string
	}{
		{"capitalised name colliding", schemas.FormatCallAutomation, `{"specversion":"1.0","id":"e1","ID":"E1","source":"s","type":"t"}`, "differs only in case", "e1", ""},
		{"name not lower-case alphanumeric", schemas.FormatCallAutomation, `{"specversion":"1.0","id":"e2","source":"s","type":"t","Trace-Id":"x"}`, "attribute name", "e2", ""},
		{"missing source", schemas.FormatCallAutomation, `{"specversion":"1.0","id":"e3","type":"t","data":{"correlationId":"k3"}}`, `"source" is required`, "e3", "k3"},
		{"wrong specversion", schemas.FormatCallAutomation, `{"specversion":"0.3","id":"e4","source":"s","type":"t"}`, `only "1.0"`, "e4", ""},
		{"missing specversion", schemas.FormatCloudEventBatch, `{"id":"e5","source":"s","type":"t"}`, `"specversion" is required`, "e5", ""},
		{"non-string id", schemas.FormatCallAutomation, `{"specversion":"1.0","id":7,"source":"s","type":"t","data":{"callConnectionId":"c6"}}`, `"id" must be a string`, "", "c6"},
		{"invalid time", schemas.FormatCloudEventBatch, `{"specversion":"1.0","id":"e7","source":"s","type":"t","time":"noon"}`, "RFC 3339", "e7", ""},
		{"data with data_base64", schemas.FormatCallAutomation, `{"specversion":"1.0","id":"e8","source":"s","type":"t","data":1,"data_base64":"AQ=="}`, "cannot be combined", "e8", ""},
		{"null element", schemas.FormatCallAutomation, `null`, "is null", "", ""},
		{"string element", schemas.FormatCloudEventBatch, `"an event"`, "not a JSON object", "", ""},
		{"array element", schemas.FormatCallAutomation, `[1,2]`, "not a JSON object", "", ""},
		{"object extension", schemas.FormatCallAutomation, `{"specversion":"1.0","id":"e12","source":"s","type":"t","ext":{"a":1}}`, "string, number or boolean", "e12", ""},
		{"invalid UTF-8 in the id", schemas.FormatCallAutomation, "{\"specversion\":\"1.0\",\"id\":\"e\xff13\",\"source\":\"s\",\"type\":\"t\"}", "UTF-8", "", ""},
		{"invalid UTF-8 in data", schemas.FormatCallAutomation, "{\"specversion\":\"1.0\",\"id\":\"e14\",\"source\":\"s\",\"type\":\"t\",\"data\":{\"text\":\"\xc3\"}}", "UTF-8", "e14", ""},
		{"Event Grid event without topic", schemas.FormatEventGrid, `{"id":"e15","eventType":"T","data":{"correlationId":"k15"}}`, `"topic" is required`, "e15", "k15"},
		{"Event Grid event with numeric subject", schemas.FormatEventGrid, `{"id":"e16","topic":"/t","eventType":"T","subject":5}`, `"subject" must be a string`, "e16", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			goodEvent := good
			if tt.format == schemas.FormatEventGrid {
				goodEvent = `{"id":"ok","topic":"/t","eventType":"T","data":{"correlationId":"k0"}}`
			}
			body := "[" + goodEvent + "," + tt.bad + "]"
			var out schemas.Parsed
			if err := schemas.Parse([]byte(body), tt.format, fixedProvenance, &out); err != nil {
				t.Fatalf("Parse refused the body: %v", err)
			}
			if len(out.Events) != 1 || out.Events[0].ID != "ok" || out.Events[0].PartitionKey != "k0" {
				t.Fatalf("events %+v, want the good one", out.Events)
			}
			if len(out.Malformed) != 1 {
				t.Fatalf("%d malformed, want 1", len(out.Malformed))
			}
			m := out.Malformed[0]
			if m.Index != 1 || string(m.Raw) != tt.bad || !strings.Contains(m.Err.Error(), tt.rule) || !strings.Contains(m.Err.Error(), "event 1") {
				t.Errorf("malformed %d %q: %v, want the element as received and a rule saying %q", m.Index, m.Raw, m.Err, tt.rule)
			}
			if m.ID != tt.id || m.PartitionKey != tt.key {
				t.Errorf("identity read: id %q key %q, want %q %q", m.ID, m.PartitionKey, tt.id, tt.key)
			}
			var pe *schemas.ParseError
			if !errors.As(m.Err, &pe) {
				t.Errorf("rule %v is not a *ParseError", m.Err)
			}
		})
	}
}

// TestParseLenientRepairs: the documented lenient rules turn these into
// events, where the strict parsers refuse them.
func TestParseLenientRepairs(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		format schemas.Format
		body   string
		check  func(e []schemas.Event) bool
	}{
		{"capitalised attribute names are lower-cased", schemas.FormatCallAutomation,
			`[{"specVersion":"1.0","ID":"e","Source":"s","type":"t","traceParent":"00-x","Data":{"correlationId":"k"}}]`,
			func(e []schemas.Event) bool {
				return e[0].ID == "e" && e[0].Source == "s" && e[0].PartitionKey == "k" && string(e[0].Extensions["traceparent"]) == `"00-x"`
			}},
		{"an array in structured mode is a batch", schemas.FormatCloudEvent, "[" + minimal + "," + minimal + "]",
			func(e []schemas.Event) bool { return len(e) == 2 }},
		{"an object in batch mode is a batch of one", schemas.FormatCloudEventBatch, minimal,
			func(e []schemas.Event) bool { return len(e) == 1 && e[0].ID == "e1" }},
	}
	for _, tt := range tests {
		var out schemas.Parsed
		if err := schemas.Parse([]byte(tt.body), tt.format, fixedProvenance, &out); err != nil || len(out.Malformed) != 0 || len(out.Events) == 0 || !tt.check(out.Events) {
			t.Errorf("%s: err %v, events %+v, malformed %+v", tt.name, err, out.Events, out.Malformed)
		}
		if _, err := strictParser(tt.format)([]byte(tt.body), fixedProvenance); err == nil {
			t.Errorf("%s: the strict parser accepted it too", tt.name)
		}
	}
}

func strictParser(f schemas.Format) func([]byte, schemas.Provenance) ([]schemas.Event, error) {
	switch f {
	case schemas.FormatCloudEvent:
		return schemas.ParseCloudEvent
	case schemas.FormatCloudEventBatch:
		return schemas.ParseCloudEventBatch
	case schemas.FormatEventGrid:
		return schemas.ParseEventGrid
	}
	return schemas.ParseCallAutomation
}

// TestParseLenientBodyErrors: what Parse still refuses is the body as a
// whole: not JSON, or more elements than MaxEvents. JSON that holds no
// event is not refused.
func TestParseLenientBodyErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		body      string
		want      error
		malformed int
	}{
		{``, schemas.ErrMalformed, 0},
		{`[{"id":`, schemas.ErrMalformed, 0},
		{"[\"\xff\"", schemas.ErrMalformed, 0},
		{`hello`, schemas.ErrMalformed, 0},
		{`[]`, nil, 0},
		{`42`, nil, 1},
		{`{}`, nil, 1},
		{"\"\xff\"", nil, 1},
		{"[" + strings.Repeat("{},", schemas.MaxEvents) + "{}]", schemas.ErrTooManyEvents, 0},
	}
	for _, tt := range tests {
		var out schemas.Parsed
		err := schemas.Parse([]byte(tt.body), schemas.FormatCallAutomation, fixedProvenance, &out)
		if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) || len(out.Malformed) != tt.malformed || len(out.Events) != 0 {
			t.Errorf("Parse(%.40q): err %v, %d malformed; want %v and %d", tt.body, err, len(out.Malformed), tt.want, tt.malformed)
		}
	}
}

// TestParseCountsBeforeDecoding: a body of a few hundred thousand tiny
// elements is refused at the element past MaxEvents without decoding
// anything: the allocations do not grow with the body.
func TestParseCountsBeforeDecoding(t *testing.T) {
	body := []byte("[" + strings.Repeat("{},", 349_000) + "{}]")
	var out schemas.Parsed
	allocs := testing.AllocsPerRun(5, func() {
		if err := schemas.Parse(body, schemas.FormatCallAutomation, fixedProvenance, &out); !errors.Is(err, schemas.ErrTooManyEvents) {
			t.Fatalf("err %v, want ErrTooManyEvents", err)
		}
	})
	if allocs > 10 {
		t.Errorf("%v allocations to refuse an oversized batch, want a few", allocs)
	}
}

// TestInvalidUTF8IsNeverNormalized: two ids that differ only in invalid
// bytes must not reach a backend as one id; the strict parsers refuse such
// an event, the lenient one dead-letters it.
func TestInvalidUTF8IsNeverNormalized(t *testing.T) {
	t.Parallel()
	for _, body := range []string{
		"{\"specversion\":\"1.0\",\"id\":\"a\xff\",\"source\":\"s\",\"type\":\"t\"}",
		"{\"specversion\":\"1.0\",\"id\":\"a\",\"source\":\"s\xfe\",\"type\":\"t\"}",
		"{\"specversion\":\"1.0\",\"id\":\"a\",\"source\":\"s\",\"type\":\"t\",\"data\":\"\xc0\xaf\"}",
		"{\"specversion\":\"1.0\",\"id\":\"a\",\"source\":\"s\",\"type\":\"t\",\"x\xff\":1}",
	} {
		if _, err := schemas.ParseCallAutomation([]byte(body), fixedProvenance); !errors.Is(err, schemas.ErrMalformed) || !strings.Contains(err.Error(), "UTF-8") {
			t.Errorf("strict parse of %q: %v, want a UTF-8 error", body, err)
		}
		var out schemas.Parsed
		if err := schemas.Parse([]byte(body), schemas.FormatCallAutomation, fixedProvenance, &out); err != nil || len(out.Events) != 0 || len(out.Malformed) != 1 {
			t.Errorf("lenient parse of %q: err %v, %d events, %d malformed; want it dead-lettered", body, err, len(out.Events), len(out.Malformed))
		}
	}
}

// TestRejectMovesAnEventToMalformed covers Parsed.Reject, which the ingress
// uses for rules of its own.
func TestRejectMovesAnEventToMalformed(t *testing.T) {
	t.Parallel()
	body := "[" + minimal + "," + strings.Replace(minimal, `"e1"`, `"e2"`, 1) + "]"
	var out schemas.Parsed
	if err := schemas.Parse([]byte(body), schemas.FormatCallAutomation, fixedProvenance, &out); err != nil {
		t.Fatal(err)
	}
	out.Reject(0, "is not welcome here")
	if len(out.Events) != 1 || out.Events[0].ID != "e2" || len(out.Malformed) != 1 {
		t.Fatalf("after Reject: %d events, %d malformed", len(out.Events), len(out.Malformed))
	}
	m := out.Malformed[0]
	if m.ID != "e1" || m.PartitionKey != "k1" || string(m.Raw) != minimal || !strings.Contains(m.Err.Error(), "is not welcome here") || !errors.Is(m.Err, schemas.ErrInvalidEvent) {
		t.Errorf("rejected event: %+v", m)
	}
}

// TestPartitionKeyReadsEscapedNames: the backend's JSON decoder sees
// "correlation\u0049d" as correlationId, so the partition key must too, and
// the last of repeated names wins as in encoding/json.
func TestPartitionKeyReadsEscapedNames(t *testing.T) {
	t.Parallel()
	tests := []struct{ data, want string }{
		{`{"correlation\u0049d":"esc"}`, "esc"},
		{`{"\u0063allConnectionId":"conn"}`, "conn"},
		{`{"correlationId":"first","correlationId":"second"}`, "second"},
		{`{"correlationId":"a","correlationId":1,"callConnectionId":"c"}`, "c"},
		{`{"correlationId":"a\u00e9"}`, "aé"},
	}
	for _, tt := range tests {
		if got := schemas.PartitionKey([]byte(tt.data)); got != tt.want {
			t.Errorf("PartitionKey(%s) = %q, want %q", tt.data, got, tt.want)
		}
	}
}

func FuzzParseLenient(f *testing.F) {
	addInputs(f, "callautomation")
	addInputs(f, "eventgrid")
	f.Add([]byte(minimal))
	f.Add([]byte(`[null,{"ID":"x"},"s",1,{"specversion":"1.0","id":"e","source":"s","type":"t","Ext":true}]`))
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, format := range []schemas.Format{schemas.FormatCallAutomation, schemas.FormatCloudEvent, schemas.FormatEventGrid} {
			var out schemas.Parsed
			err := schemas.Parse(body, format, fixedProvenance, &out)
			if err != nil {
				if !errors.Is(err, schemas.ErrMalformed) && !errors.Is(err, schemas.ErrTooManyEvents) {
					t.Fatalf("error %v is not a body-level sentinel", err)
				}
				continue
			}
			if len(out.Events) > 0 {
				checkParsed(t, out.Events, nil)
			}
			for _, m := range out.Malformed {
				if len(m.Raw) == 0 || m.Err == nil || !strings.Contains(string(body), string(m.Raw)) {
					t.Fatalf("malformed element %+v is not part of the body", m)
				}
			}
		}
	})
}

// TestParseDeepNesting: nesting as deep as encoding/json allows is one
// malformed element; deeper is not JSON. Either way the scan is iterative:
// nesting costs a byte a level, not a stack frame.
func TestParseDeepNesting(t *testing.T) {
	t.Parallel()
	var out schemas.Parsed
	deep := "[" + strings.Repeat("[", 9999) + strings.Repeat("]", 9999) + "]"
	if err := schemas.Parse([]byte(deep), schemas.FormatCallAutomation, fixedProvenance, &out); err != nil || len(out.Malformed) != 1 {
		t.Errorf("10,000 levels: err %v, %d malformed; want one malformed element", err, len(out.Malformed))
	}
	deeper := "[" + deep + "]"
	if err := schemas.Parse([]byte(deeper), schemas.FormatCallAutomation, fixedProvenance, &out); !errors.Is(err, schemas.ErrMalformed) {
		t.Errorf("10,001 levels: err %v, want ErrMalformed", err)
	}
}
