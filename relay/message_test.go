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
}

// TestMessageIDIsSourceAndID: the MessageID tells apart two events that
// share an id but not a source, stays the same for a sender's redelivery,
// and keeps the id itself where the id alone is unique.
func TestMessageIDIsSourceAndID(t *testing.T) {
	t.Parallel()
	const uuid = "6D1C6F2E-0B7A-4E63-9F1A-3C4D5E6F7A8B"
	tests := []struct {
		name              string
		source, id        string
		keep              bool
		otherSourceSameID bool // a different source yields another MessageID
	}{
		{"sequence id", "/subscriptions/s/topics/a", "1", false, true},
		{"uuid", "/subscriptions/s/topics/a", uuid, true, false},
		{"call automation uuid", "calling/callConnections/c1", strings.ToLower(uuid), true, false},
		{"made-up id", "calling/callConnections/c1", "evt-1", false, true},
		{"id too long", "/t", strings.Repeat("x", MaxIDLength+1), false, true},
		{"almost a uuid", "s", "6D1C6F2E-0B7A-4E63-9F1A-3C4D5E6F7A8", false, true},
	}
	for _, tt := range tests {
		id := MessageID(tt.source, tt.id)
		if (id == tt.id) != tt.keep {
			t.Errorf("%s: MessageID %q, keep the id %v", tt.name, id, tt.keep)
		}
		if len(id) > MaxIDLength {
			t.Errorf("%s: MessageID of %d characters", tt.name, len(id))
		}
		if again := MessageID(tt.source, tt.id); again != id {
			t.Errorf("%s: not stable: %q then %q", tt.name, id, again)
		}
		if other := MessageID(tt.source+"x", tt.id); (other != id) != tt.otherSourceSameID {
			t.Errorf("%s: another source gives %q, first %q", tt.name, other, id)
		}
	}
	// The digest never changes between releases: messages queued by one
	// are duplicates of a redelivery received by the next.
	for _, g := range []struct{ source, id, want string }{
		{"calling/callConnections/c1", "evt-1", "sha256-5fdf4b2bdcc6f1cee8610985fe02d6067d8e0e5da6c986af6d32bcd47135324f"},
		{"/subscriptions/s/topics/a", "1", "sha256-1e76dec49a7a85117718fdf8604406254bbc67cce2fcc3e8abd82ba2d2f8b164"},
	} {
		if got := MessageID(g.source, g.id); got != g.want {
			t.Errorf("MessageID(%q, %q) = %q, want %q (as earlier releases)", g.source, g.id, got, g.want)
		}
	}
	// Source and id are framed, not concatenated: ("ab","c") ≠ ("a","bc").
	if MessageID("ab", "c") == MessageID("a", "bc") {
		t.Error("source and id run together")
	}
	// Through NewMessage: two topics' events "1" on the Event Grid route
	// are two messages, each keeping its cloudEvents_id.
	a, b := testEvent(), testEvent()
	a.Route, b.Route = schemas.RouteEventGrid, schemas.RouteEventGrid
	a.ID, b.ID = "1", "1"
	b.Source = "/subscriptions/s/topics/other"
	ma, _ := NewMessage(&a)
	mb, _ := NewMessage(&b)
	if ma.ID == mb.ID || ma.Properties[PropID] != "1" || mb.Properties[PropID] != "1" {
		t.Errorf("same id from two sources: MessageIDs %q and %q", ma.ID, mb.ID)
	}
}

func TestNewMalformedMessage(t *testing.T) {
	t.Parallel()
	raw := []byte(`{"specversion":"0.3","id":"e1","source":"s","type":"T","data":{"correlationId":"call-1"}}`)
	var parsed schemas.Parsed
	if err := schemas.Parse(append([]byte("["), append(raw, ']')...), schemas.FormatCallAutomation, schemas.Provenance{}, &parsed); err != nil || len(parsed.Malformed) != 1 {
		t.Fatalf("parse: %v %+v", err, parsed)
	}
	m := NewMalformedMessage(&parsed.Malformed[0])
	if m.DeadLetterReason != ReasonMalformedEvent || !strings.Contains(m.DeadLetterDescription, "specversion") {
		t.Errorf("reason %q description %q", m.DeadLetterReason, m.DeadLetterDescription)
	}
	if string(m.Body) != string(raw) || m.ContentType != MalformedContentType {
		t.Errorf("body %s (%s), want the element as received", m.Body, m.ContentType)
	}
	if m.SessionID != "call-1" || m.Properties[PropID] != "e1" || m.Properties[PropType] != "T" || m.Properties[PropSource] != "s" {
		t.Errorf("identity: session %q properties %v", m.SessionID, m.Properties)
	}
	if !strings.HasPrefix(m.ID, "malformed-") || len(m.ID) > MaxIDLength {
		t.Errorf("MessageID %q", m.ID)
	}
	again := NewMalformedMessage(&parsed.Malformed[0])
	parsed.Malformed[0].Raw[5] = 'X' // the message owns its body
	if again.ID != m.ID || string(m.Body) != string(raw) {
		t.Error("MessageID not stable, or the body aliases the request")
	}
}
