package schemas_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hookbridge/hookbridge/schemas"
)

const minimal = `{"specversion":"1.0","id":"e1","source":"calling/callConnections/c1","type":"Microsoft.Communication.CallConnected","data":{"callConnectionId":"c1","correlationId":"k1"}}`

func TestParseCallAutomationErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		body     string
		want     error
		contains string
	}{
		{"empty body", ``, schemas.ErrMalformed, "empty"},
		{"whitespace", " \n ", schemas.ErrMalformed, "empty"},
		{"not json", `hello`, schemas.ErrMalformed, "JSON object or array"},
		{"truncated array", `[` + minimal, schemas.ErrMalformed, "invalid JSON"},
		{"truncated object", minimal[:40], schemas.ErrMalformed, "invalid JSON"},
		{"trailing garbage", minimal + `x`, schemas.ErrMalformed, "invalid JSON"},
		{"empty array", `[]`, schemas.ErrNoEvents, "empty"},
		{"array of strings", `["a"]`, schemas.ErrMalformed, "not a JSON object"},
		{"number", `42`, schemas.ErrMalformed, "JSON object or array"},
		{"missing specversion", `{"id":"e","source":"s","type":"t"}`, schemas.ErrInvalidEvent, `"specversion" is required`},
		{"wrong specversion", `{"specversion":"0.3","id":"e","source":"s","type":"t"}`, schemas.ErrInvalidEvent, `only "1.0"`},
		{"missing id", `{"specversion":"1.0","source":"s","type":"t"}`, schemas.ErrInvalidEvent, `"id" is required`},
		{"empty id", `{"specversion":"1.0","id":"","source":"s","type":"t"}`, schemas.ErrInvalidEvent, `"id" must not be empty`},
		{"missing source", `{"specversion":"1.0","id":"e","type":"t"}`, schemas.ErrInvalidEvent, `"source" is required`},
		{"missing type", `{"specversion":"1.0","id":"e","source":"s"}`, schemas.ErrInvalidEvent, `"type" is required`},
		{"numeric id", `{"specversion":"1.0","id":7,"source":"s","type":"t"}`, schemas.ErrInvalidEvent, `"id" must be a string`},
		{"bad time", `{"specversion":"1.0","id":"e","source":"s","type":"t","time":"yesterday"}`, schemas.ErrInvalidEvent, "RFC 3339"},
		{"bad extension name", `{"specversion":"1.0","id":"e","source":"s","type":"t","Trace-Id":"x"}`, schemas.ErrInvalidEvent, "attribute name"},
		{"object extension", `{"specversion":"1.0","id":"e","source":"s","type":"t","ext":{"a":1}}`, schemas.ErrInvalidEvent, "string, number or boolean"},
		{"data and data_base64", `{"specversion":"1.0","id":"e","source":"s","type":"t","data":1,"data_base64":"AQ=="}`, schemas.ErrInvalidEvent, "cannot be combined"},
		{"second event bad", `[` + minimal + `,{"specversion":"1.0","id":"e2","type":"t"}]`, schemas.ErrInvalidEvent, "event 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			events, err := schemas.ParseCallAutomation([]byte(tt.body), fixedProvenance)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if events != nil {
				t.Errorf("events = %v, want none on error", events)
			}
			if !strings.Contains(err.Error(), tt.contains) {
				t.Errorf("err %q does not say %q", err, tt.contains)
			}
		})
	}
}

func TestParseTooManyEvents(t *testing.T) {
	t.Parallel()
	body := "[" + strings.Repeat(minimal+",", schemas.MaxEvents) + minimal + "]"
	_, err := schemas.ParseCallAutomation([]byte(body), fixedProvenance)
	if !errors.Is(err, schemas.ErrTooManyEvents) {
		t.Fatalf("err = %v, want ErrTooManyEvents", err)
	}
}

func TestProvenanceCannotBeForged(t *testing.T) {
	t.Parallel()
	body := `{"specversion":"1.0","id":"e","source":"s","type":"t",
		"hookbridgeroute":"forged","hookbridgeverifier":"none","hookbridgereceived":"2000-01-01T00:00:00Z",
		"partitionkey":"someone-elses-call","data":{"correlationId":"mine"}}`
	events, err := schemas.ParseCallAutomation([]byte(body), fixedProvenance)
	if err != nil {
		t.Fatal(err)
	}
	e := events[0]
	if e.Route != fixedProvenance.Route || e.Verifier != fixedProvenance.Verifier || !e.Received.Equal(fixedProvenance.Received) {
		t.Errorf("provenance taken from the sender: %+v", e)
	}
	if e.PartitionKey != "mine" {
		t.Errorf("partition key = %q, want the one derived from data", e.PartitionKey)
	}
	if len(e.Extensions) != 0 {
		t.Errorf("reserved attributes leaked into extensions: %v", e.Extensions)
	}
}

func TestPartitionKey(t *testing.T) {
	t.Parallel()
	tests := []struct {
		data string
		want string
	}{
		{`{"correlationId":"corr","callConnectionId":"conn"}`, "corr"},
		{`{"callConnectionId":"conn"}`, "conn"},
		{`{"correlationId":"","callConnectionId":"conn"}`, "conn"},
		{`{"correlationId":42,"callConnectionId":"conn"}`, "conn"},
		{`{"other":"x"}`, ""},
		{`"a string"`, ""},
		{`[1,2]`, ""},
		{`   `, ""},
		{``, ""},
		{`{"correlationId":`, ""},
	}
	for _, tt := range tests {
		if got := schemas.PartitionKey(json.RawMessage(tt.data)); got != tt.want {
			t.Errorf("PartitionKey(%s) = %q, want %q", tt.data, got, tt.want)
		}
	}
}

func TestParseShapes(t *testing.T) {
	t.Parallel()
	if _, err := schemas.ParseCloudEvent([]byte("["+minimal+"]"), fixedProvenance); !errors.Is(err, schemas.ErrMalformed) {
		t.Errorf("structured mode accepted an array: %v", err)
	}
	if _, err := schemas.ParseCloudEventBatch([]byte(minimal), fixedProvenance); !errors.Is(err, schemas.ErrMalformed) {
		t.Errorf("batch mode accepted an object: %v", err)
	}
	one, err := schemas.ParseCloudEvent([]byte(minimal), fixedProvenance)
	if err != nil || len(one) != 1 || one[0].PartitionKey != "k1" {
		t.Fatalf("structured: %v %+v", err, one)
	}
	two, err := schemas.ParseCloudEventBatch([]byte("["+minimal+","+minimal+"]"), fixedProvenance)
	if err != nil || len(two) != 2 {
		t.Fatalf("batch: %v %d", err, len(two))
	}
}

func TestNullAttributesAreAbsent(t *testing.T) {
	t.Parallel()
	body := `{"specversion":"1.0","id":"e","source":"s","type":"t","subject":null,"data":null,"ext":null}`
	events, err := schemas.ParseCallAutomation([]byte(body), fixedProvenance)
	if err != nil {
		t.Fatal(err)
	}
	e := events[0]
	if e.Subject != "" || e.Data != nil || len(e.Extensions) != 0 {
		t.Errorf("null attributes kept: %+v", e)
	}
	enc, err := e.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(enc), "null") {
		t.Errorf("encoding has null: %s", enc)
	}
}

func TestMarshalRejectsInvalidEvents(t *testing.T) {
	t.Parallel()
	bad := []schemas.Event{
		{ID: "e", Source: "s", Type: "t", Data: json.RawMessage(`{"unterminated`)},
		{ID: "e", Source: "s", Type: "t", Extensions: map[string]json.RawMessage{"Bad": json.RawMessage(`"x"`)}},
		{ID: "e", Source: "s", Type: "t", Extensions: map[string]json.RawMessage{"obj": json.RawMessage(`{}`)}},
	}
	for i := range bad {
		if _, err := bad[i].MarshalJSON(); err == nil {
			t.Errorf("event %d encoded without error", i)
		}
	}
}

func TestReceivedIsUTC(t *testing.T) {
	t.Parallel()
	p := fixedProvenance
	p.Received = time.Date(2024, 1, 2, 3, 4, 5, 0, time.FixedZone("X", 3600))
	events, err := schemas.ParseCallAutomation([]byte(minimal), p)
	if err != nil {
		t.Fatal(err)
	}
	enc, _ := events[0].MarshalJSON()
	if !strings.Contains(string(enc), `"hookbridgereceived":"2024-01-02T02:04:05Z"`) {
		t.Errorf("received time not in UTC: %s", enc)
	}
}

func BenchmarkParseCallAutomation(b *testing.B) {
	body, err := os.ReadFile("testdata/callautomation/PlayCompleted.json")
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for range b.N {
		events, err := schemas.ParseCallAutomation(body, fixedProvenance)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := events[0].MarshalJSON(); err != nil {
			b.Fatal(err)
		}
	}
}

func TestParseEventGridErrors(t *testing.T) {
	t.Parallel()
	const ok = `{"id":"1","topic":"/t","subject":"s","eventType":"T","eventTime":"2024-01-01T00:00:00Z","data":{},"dataVersion":"1.0","metadataVersion":"1"}`
	tests := []struct {
		name, body string
		want       error
		contains   string
	}{
		{"missing id", `[{"topic":"/t","eventType":"T"}]`, schemas.ErrInvalidEvent, `"id" is required`},
		{"missing topic", `[{"id":"1","eventType":"T"}]`, schemas.ErrInvalidEvent, `"topic" is required`},
		{"missing eventType", `[{"id":"1","topic":"/t"}]`, schemas.ErrInvalidEvent, `"eventType" is required`},
		{"bad eventTime", `[{"id":"1","topic":"/t","eventType":"T","eventTime":"noon"}]`, schemas.ErrInvalidEvent, "RFC 3339"},
		{"numeric subject", `[{"id":"1","topic":"/t","eventType":"T","subject":5}]`, schemas.ErrInvalidEvent, `"subject" must be a string`},
		{"empty array", `[]`, schemas.ErrNoEvents, "empty"},
		{"not json", `{`, schemas.ErrMalformed, "invalid JSON"},
		{"second bad", `[` + ok + `,{"id":"2"}]`, schemas.ErrInvalidEvent, "event 1"},
	}
	for _, tt := range tests {
		events, err := schemas.ParseEventGrid([]byte(tt.body), eventGridProvenance)
		if !errors.Is(err, tt.want) || events != nil || !strings.Contains(err.Error(), tt.contains) {
			t.Errorf("%s: err = %v, want %v mentioning %q", tt.name, err, tt.want, tt.contains)
		}
	}
	events, err := schemas.ParseEventGrid([]byte(ok), eventGridProvenance)
	if err != nil || len(events) != 1 || events[0].DataVersion != "1.0" || events[0].Source != "/t" {
		t.Errorf("single object: %v %+v", err, events)
	}
}

// An event is encoded into one allocation, the size of its attributes and
// data taken up front: a guess too small copies the whole event again as it
// grows, which an Event Grid event's long source and subject used to cause.
func TestMarshalAllocatesOnce(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts differ under the race detector; run without -race")
	}
	for _, tc := range []struct {
		file  string
		parse func([]byte, schemas.Provenance) ([]schemas.Event, error)
	}{
		{"testdata/eventgrid/IncomingCall.json", schemas.ParseEventGrid},
		{"testdata/eventgrid/IncomingCall-custom-context.json", schemas.ParseEventGrid},
		{"testdata/callautomation/ParticipantsUpdated.json", schemas.ParseCallAutomation},
		{"testdata/cloudevents/binary-data.json", schemas.ParseCloudEvent},
	} {
		body, err := os.ReadFile(tc.file)
		if err != nil {
			t.Fatal(err)
		}
		events, err := tc.parse(body, fixedProvenance)
		if err != nil {
			t.Fatalf("%s: %v", tc.file, err)
		}
		for i := range events {
			if n := testing.AllocsPerRun(10, func() { events[i].MarshalJSON() }); n != 1 {
				t.Errorf("%s, event %d: %v allocations to encode, want 1", tc.file, i, n)
			}
		}
	}
	// Extensions are sorted by name on the stack, up to eight of them.
	e := schemas.Event{ID: "e1", Source: "/subscriptions/" + strings.Repeat("0", 36) + "/resourceGroups/rg", Type: "t",
		Data: json.RawMessage(`{"a":1}`), Extensions: map[string]json.RawMessage{}}
	for i := range 8 {
		e.Extensions[fmt.Sprintf("ext%d", i)] = json.RawMessage(`"value"`)
	}
	if n := testing.AllocsPerRun(10, func() { e.MarshalJSON() }); n != 1 {
		t.Errorf("an event with 8 extensions: %v allocations to encode, want 1", n)
	}
}
