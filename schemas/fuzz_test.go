package schemas_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/hookbridge/hookbridge/schemas"
)

// addInputs seeds a fuzz target with every input file under testdata/<dir>.
func addInputs(f *testing.F, dir string) {
	f.Helper()
	files, _ := filepath.Glob(filepath.Join("testdata", dir, "*.json"))
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
}

// checkParsed is the property every parser must keep on any input: either a
// sentinel error and no events, or events that encode to valid JSON and parse
// back unchanged.
func checkParsed(t *testing.T, events []schemas.Event, err error) {
	t.Helper()
	if err != nil {
		if events != nil {
			t.Fatalf("events returned with error %v", err)
		}
		if !errors.Is(err, schemas.ErrMalformed) && !errors.Is(err, schemas.ErrInvalidEvent) &&
			!errors.Is(err, schemas.ErrNoEvents) && !errors.Is(err, schemas.ErrTooManyEvents) {
			t.Fatalf("error %v wraps no sentinel", err)
		}
		return
	}
	if len(events) == 0 {
		t.Fatal("no events and no error")
	}
	for i := range events {
		enc, err := events[i].MarshalJSON()
		if err != nil {
			t.Fatalf("parsed event %d does not encode: %v", i, err)
		}
		back, err := schemas.ParseNormalized(enc)
		if err != nil {
			t.Fatalf("encoded event %d does not parse back: %v\n%s", i, err, enc)
		}
		again, err := back.MarshalJSON()
		if err != nil || string(again) != string(enc) {
			t.Fatalf("round trip changed event %d:\n%s\n%s", i, enc, again)
		}
	}
}

func FuzzParseCallAutomation(f *testing.F) {
	addInputs(f, "callautomation")
	f.Add([]byte(minimal))
	f.Add([]byte(`[{"specversion":"1.0","id":"e","source":"s","type":"t","data_base64":"AAEC","x1":true,"x2":1.5}]`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`{"specversion":"1.0","id":"e","source":"s","type":"t","data":"\u0000"}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		events, err := schemas.ParseCallAutomation(body, fixedProvenance)
		checkParsed(t, events, err)
	})
}

func FuzzParseEventGrid(f *testing.F) {
	addInputs(f, "eventgrid")
	f.Add([]byte(`[{"id":"1","topic":"/t","eventType":"Microsoft.EventGrid.SubscriptionValidationEvent","data":{"validationCode":"abc"}}]`))
	f.Add([]byte(`[{"id":"1","topic":"/t","eventType":"T","data":null,"dataVersion":""}]`))
	f.Fuzz(func(t *testing.T, body []byte) {
		events, err := schemas.ParseEventGrid(body, eventGridProvenance)
		checkParsed(t, events, err)
	})
}

func FuzzParseCloudEvents(f *testing.F) {
	addInputs(f, "cloudevents")
	f.Add([]byte(minimal))
	f.Add([]byte("[" + minimal + "]"))
	f.Fuzz(func(t *testing.T, body []byte) {
		events, err := schemas.ParseCloudEvent(body, eventGridProvenance)
		checkParsed(t, events, err)
		events, err = schemas.ParseCloudEventBatch(body, eventGridProvenance)
		checkParsed(t, events, err)
	})
}
