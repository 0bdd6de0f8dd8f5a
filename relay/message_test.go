package relay

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/hookbridge/hookbridge/schemas"
)

func testEvent() schemas.Event {
	return schemas.Event{
		ID:              "9d8c7b6a-0000-4000-8000-000000000001",
		Source:          "calling/callConnections/421f0b00-0000-4000-8000-000000000000",
		Type:            "Microsoft.Communication.CallConnected",
		Subject:         "calling/callConnections/421f0b00-0000-4000-8000-000000000000",
		Time:            "2026-11-28T10:00:00Z",
		DataContentType: "application/json",
		Data:            json.RawMessage(`{"callConnectionId":"421f0b00-0000-4000-8000-000000000000"}`),
		PartitionKey:    "421f0b00-0000-4000-8000-000000000000",
		Received:        time.Date(2026, 11, 28, 10, 0, 1, 0, time.UTC),
		Route:           "callbacks",
		Verifier:        "acs",
	}
}

func TestNewMessageMapping(t *testing.T) {
	e := testEvent()
	m, err := NewMessage(&e)
	if err != nil {
		t.Fatal(err)
	}
	if m.ID != e.ID || m.SessionID != e.PartitionKey || m.Subject != e.Type || m.ContentType != schemas.ContentType {
		t.Fatalf("message %+v does not carry the event's id, key and type", m)
	}
	want := map[string]any{
		PropType: e.Type, PropSource: e.Source, PropID: e.ID,
		PropSubject: e.Subject, PropTime: e.Time,
	}
	if len(m.Properties) != len(want) {
		t.Fatalf("properties %v, want %v", m.Properties, want)
	}
	for k, v := range want {
		if m.Properties[k] != v {
			t.Errorf("property %s = %v, want %v", k, m.Properties[k], v)
		}
	}
	back, err := m.Event()
	if err != nil {
		t.Fatal(err)
	}
	if back.ID != e.ID || back.PartitionKey != e.PartitionKey || string(back.Data) != string(e.Data) || !back.Received.Equal(e.Received) {
		t.Fatalf("body round trip: got %+v", back)
	}
	if m.Size() < len(m.Body)+len(m.ID)+len(m.SessionID) {
		t.Fatalf("Size %d smaller than body and identifiers", m.Size())
	}
}

// Optional attributes absent from the event are absent from the properties,
// and an event without a partition key has no session.
func TestNewMessageOptional(t *testing.T) {
	e := testEvent()
	e.Subject, e.Time, e.PartitionKey = "", "", ""
	m, err := NewMessage(&e)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := m.Properties[PropSubject]; ok {
		t.Error("subject property set for an event without subject")
	}
	if _, ok := m.Properties[PropTime]; ok {
		t.Error("time property set for an event without time")
	}
	if m.SessionID != "" {
		t.Errorf("session %q for an event without partition key", m.SessionID)
	}
}

// Identifiers longer than Service Bus accepts become a stable digest, the
// same for the same input and different for different inputs.
func TestNewMessageLongIdentifiers(t *testing.T) {
	e := testEvent()
	e.ID = strings.Repeat("i", MaxIDLength+1)
	e.PartitionKey = strings.Repeat("k", 500)
	m, err := NewMessage(&e)
	if err != nil {
		t.Fatal(err)
	}
	for name, id := range map[string]string{"MessageID": m.ID, "SessionID": m.SessionID} {
		if len(id) > MaxIDLength || !strings.HasPrefix(id, "sha256-") {
			t.Errorf("%s %q: want a sha256 digest of at most %d characters", name, id, MaxIDLength)
		}
	}
	if m.Properties[PropID] != e.ID {
		t.Error("the cloudEvents_id property must keep the full event id")
	}
	again, _ := NewMessage(&e)
	if again.ID != m.ID || again.SessionID != m.SessionID {
		t.Error("digest not stable across calls")
	}
	e.ID = strings.Repeat("i", MaxIDLength+2)
	other, _ := NewMessage(&e)
	if other.ID == m.ID {
		t.Error("different long ids map to the same MessageID")
	}
	e.ID = strings.Repeat("i", MaxIDLength)
	exact, _ := NewMessage(&e)
	if exact.ID != e.ID {
		t.Errorf("an id of exactly %d characters was rewritten", MaxIDLength)
	}
}
