package schemas_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/hookbridge/hookbridge/schemas"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/golden from the current output")

// fixedProvenance makes golden output independent of the clock.
var fixedProvenance = schemas.Provenance{
	Received: time.Date(2024, 5, 14, 17, 30, 12, 500_000_000, time.UTC),
	Route:    schemas.RouteACSCallbacks,
	Verifier: "acs-jwt",
}

// compileSchema compiles the embedded JSON Schema once per test.
func compileSchema(t testing.TB) *jsonschema.Schema {
	t.Helper()
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(schemas.EventSchema))
	if err != nil {
		t.Fatalf("decode embedded schema: %v", err)
	}
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	if err := c.AddResource("event.schema.json", doc); err != nil {
		t.Fatalf("add schema: %v", err)
	}
	s, err := c.Compile("event.schema.json")
	if err != nil {
		t.Fatalf("compile schema: %v", err)
	}
	return s
}

// validate checks one encoded event against the schema.
func validate(t testing.TB, s *jsonschema.Schema, encoded []byte) {
	t.Helper()
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(encoded))
	if err != nil {
		t.Fatalf("decode produced event: %v", err)
	}
	if err := s.Validate(v); err != nil {
		t.Errorf("produced event does not match event.schema.json: %v\n%s", err, encoded)
	}
}

type goldenCase struct {
	dir   string
	parse func([]byte, schemas.Provenance) ([]schemas.Event, error)
	prov  schemas.Provenance
}

// runGolden parses every input under testdata/<dir>, encodes the events and
// compares them with testdata/golden/<dir>/<name>: one file per input, the
// events as an indented JSON array. Each event is validated against the schema
// and must survive a round trip through ParseNormalized.
func runGolden(t *testing.T, gc goldenCase) {
	t.Helper()
	inputs, err := filepath.Glob(filepath.Join("testdata", gc.dir, "*.json"))
	if err != nil || len(inputs) == 0 {
		t.Fatalf("no inputs under testdata/%s: %v", gc.dir, err)
	}
	schema := compileSchema(t)
	for _, in := range inputs {
		name := filepath.Base(in)
		t.Run(strings.TrimSuffix(name, ".json"), func(t *testing.T) {
			t.Parallel()
			body, err := os.ReadFile(in)
			if err != nil {
				t.Fatal(err)
			}
			events, err := gc.parse(body, gc.prov)
			if err != nil {
				t.Fatalf("parse %s: %v", in, err)
			}
			var out bytes.Buffer
			out.WriteString("[\n")
			for i := range events {
				enc, err := events[i].MarshalJSON()
				if err != nil {
					t.Fatalf("encode event %d: %v", i, err)
				}
				validate(t, schema, enc)
				back, err := schemas.ParseNormalized(enc)
				if err != nil {
					t.Fatalf("normalized event %d does not parse back: %v", i, err)
				}
				again, err := back.MarshalJSON()
				if err != nil || !bytes.Equal(again, enc) {
					t.Fatalf("round trip changed event %d:\n%s\n%s (err %v)", i, enc, again, err)
				}
				if i > 0 {
					out.WriteString(",\n")
				}
				out.WriteString("  ")
				if err := json.Indent(&out, enc, "  ", "  "); err != nil {
					t.Fatal(err)
				}
			}
			out.WriteString("\n]\n")
			golden := filepath.Join("testdata", "golden", gc.dir, name)
			if *update {
				if err := os.MkdirAll(filepath.Dir(golden), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(golden, out.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("read golden file (run go test ./schemas -update to create it): %v", err)
			}
			if !bytes.Equal(out.Bytes(), want) {
				t.Errorf("output differs from %s (run go test ./schemas -update if the change is intended)\ngot:\n%s", golden, out.Bytes())
			}
		})
	}
}

func TestGoldenCallAutomation(t *testing.T) {
	t.Parallel()
	runGolden(t, goldenCase{dir: "callautomation", parse: schemas.ParseCallAutomation, prov: fixedProvenance})
}

var eventGridProvenance = schemas.Provenance{
	Received: time.Date(2024, 5, 14, 17, 30, 12, 500_000_000, time.UTC),
	Route:    schemas.RouteEventGrid,
	Verifier: "entra-jwt",
}

func TestGoldenEventGrid(t *testing.T) {
	t.Parallel()
	runGolden(t, goldenCase{dir: "eventgrid", parse: schemas.ParseEventGrid, prov: eventGridProvenance})
}

// TestGoldenCloudEvents parses structured-mode inputs (an object) and
// batch-mode inputs (an array), as Event Grid sends them with the
// CloudEvents schema.
func TestGoldenCloudEvents(t *testing.T) {
	t.Parallel()
	runGolden(t, goldenCase{dir: "cloudevents", prov: eventGridProvenance,
		parse: func(body []byte, p schemas.Provenance) ([]schemas.Event, error) {
			if bytes.HasPrefix(bytes.TrimSpace(body), []byte("[")) {
				return schemas.ParseCloudEventBatch(body, p)
			}
			return schemas.ParseCloudEvent(body, p)
		}})
}

// TestIncomingCallSharesTheCallsKey checks the property the ordering rests
// on: IncomingCall, delivered by Event Grid, and the call's Call Automation
// callbacks get the same partition key.
func TestIncomingCallSharesTheCallsKey(t *testing.T) {
	t.Parallel()
	body, err := os.ReadFile("testdata/eventgrid/IncomingCall.json")
	if err != nil {
		t.Fatal(err)
	}
	ev, err := schemas.ParseEventGrid(body, eventGridProvenance)
	if err != nil {
		t.Fatal(err)
	}
	cb := `[{"specversion":"1.0","id":"x","source":"calling/callConnections/c","type":"Microsoft.Communication.CallConnected",
		"data":{"callConnectionId":"c","correlationId":"d9a0a1b2-5c6d-4e7f-8a9b-0c1d2e3f4a5b"}}]`
	cbs, err := schemas.ParseCallAutomation([]byte(cb), fixedProvenance)
	if err != nil {
		t.Fatal(err)
	}
	if ev[0].PartitionKey == "" || ev[0].PartitionKey != cbs[0].PartitionKey {
		t.Errorf("IncomingCall key %q, callback key %q", ev[0].PartitionKey, cbs[0].PartitionKey)
	}
}
