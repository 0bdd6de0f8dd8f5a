package ingress_test

import (
	"bytes"
	"flag"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/hookbridge/hookbridge/ingress"
	"github.com/hookbridge/hookbridge/relay"
	"github.com/hookbridge/hookbridge/schemas"
)

var update = flag.Bool("update", false, "rewrite golden files under testdata/golden")

// egRequest builds a POST /eventgrid request with the static test token.
func egRequest(contentType, eventType, body string) *http.Request {
	req := testRequest(http.MethodPost, "/eventgrid", contentType, body)
	if eventType != "" {
		req.Header.Set("aeg-event-type", eventType)
	}
	return req
}

func readTestdata(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "schemas", "testdata", path))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestEventGridDeliveries(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, contentType, file string
		types                   []string
	}{
		{"event grid schema", "application/json; charset=utf-8", "eventgrid/IncomingCall.json", []string{"Microsoft.Communication.IncomingCall"}},
		{"event grid batch", "application/json", "eventgrid/batch-IncomingCall-and-SMSReceived.json", []string{"Microsoft.Communication.IncomingCall", "Microsoft.Communication.SMSReceived"}},
		{"cloudevents structured", "application/cloudevents+json; charset=utf-8", "cloudevents/IncomingCall-structured.json", []string{"Microsoft.Communication.IncomingCall"}},
		{"cloudevents batch", "application/cloudevents-batch+json", "cloudevents/batch-IncomingCall-and-SMSReceived.json", []string{"Microsoft.Communication.IncomingCall", "Microsoft.Communication.SMSReceived"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			pub := &fakePublisher{}
			h, _ := newServer(t, ingress.Config{Publisher: pub, EventGridVerifiers: []ingress.Verifier{staticVerifier{true}}})
			r := do(t, h, egRequest(tt.contentType, "Notification", readTestdata(t, tt.file)))
			if r.status != 200 {
				t.Fatalf("status %d: %s", r.status, r.raw)
			}
			var types []string
			for _, e := range pub.events {
				types = append(types, e.Type)
				if e.Route != schemas.RouteEventGrid || e.Verifier != "test" {
					t.Errorf("event %s: route %q verifier %q", e.ID, e.Route, e.Verifier)
				}
			}
			if !slices.Equal(types, tt.types) {
				t.Errorf("published %v, want %v", types, tt.types)
			}
			if pub.events[0].PartitionKey != "d9a0a1b2-5c6d-4e7f-8a9b-0c1d2e3f4a5b" {
				t.Errorf("IncomingCall partition key %q", pub.events[0].PartitionKey)
			}
		})
	}
}

func TestEventGridBatchIsAllOrNothing(t *testing.T) {
	t.Parallel()
	good := readTestdata(t, "eventgrid/IncomingCall.json")
	bad := strings.TrimSuffix(strings.TrimSpace(good), "]") + `,{"id":"x","topic":"/t"}]`
	pub := &fakePublisher{}
	h, _ := newServer(t, ingress.Config{Publisher: pub, EventGridVerifiers: []ingress.Verifier{staticVerifier{true}}})
	// A verified delivery is never refused for one bad event: the good one
	// is queued, the bad one dead-lettered, in one commit.
	if r := do(t, h, egRequest("application/json", "Notification", bad)); r.status != 200 || pub.count() != 1 || len(pub.deadLettered()) != 1 {
		t.Fatalf("one bad event: status %d, %d published, %d dead-lettered; want 200, 1 and 1", r.status, pub.count(), len(pub.deadLettered()))
	}
	pub.mu.Lock()
	pub.events, pub.dead = nil, nil
	pub.mu.Unlock()
	pub.err = fmt.Errorf("%w: down", relay.ErrUnavailable)
	batch := readTestdata(t, "eventgrid/batch-IncomingCall-and-SMSReceived.json")
	if r := do(t, h, egRequest("application/json", "Notification", batch)); r.status != 503 || pub.count() != 0 {
		t.Fatalf("queue down: status %d, %d published; want 503 and none", r.status, pub.count())
	}
}

const validationBody = `[{"id":"2d1781af-3a4c-4d7c-bd0c-e34b19da4e66","topic":"/subscriptions/x/resourceGroups/rg/providers/Microsoft.Communication/CommunicationServices/acs","subject":"","data":{"validationCode":"512d38b6-c7b8-40c8-89fe-f46f9e9622b6","validationUrl":"https://rp-eastus2.eventgrid.azure.net:553/eventsubscriptions/hookbridge/validate?id=512d38b6-c7b8-40c8-89fe-f46f9e9622b6&t=2024-05-14T17:30:00.0000000Z&apiVersion=2023-12-15-preview&token=abc"},"eventType":"Microsoft.EventGrid.SubscriptionValidationEvent","eventTime":"2024-05-14T17:30:00Z","metadataVersion":"1","dataVersion":"2"}]`

// handshakeGolden renders a response's status, the headers a handshake
// sets and its body, and compares them with testdata/golden/<name>.txt.
func handshakeGolden(t *testing.T, name string, r response) {
	t.Helper()
	var b bytes.Buffer
	fmt.Fprintf(&b, "status: %d\n", r.status)
	for _, h := range []string{"Webhook-Allowed-Origin", "Webhook-Allowed-Rate", "Allow", "Content-Type"} {
		if v := r.header.Get(h); v != "" {
			fmt.Fprintf(&b, "%s: %s\n", h, v)
		}
	}
	fmt.Fprintf(&b, "\n%s", r.raw)
	path := filepath.Join("testdata", "golden", name+".txt")
	if *update {
		os.MkdirAll(filepath.Dir(path), 0o755)
		if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden file (run go test ./ingress -update to create it): %v", err)
	}
	if !bytes.Equal(b.Bytes(), want) {
		t.Errorf("%s differs from %s:\n%s", name, path, b.String())
	}
}

func TestSubscriptionValidationHandshake(t *testing.T) {
	t.Parallel()
	iss := newIssuer(t)
	entra := newEntra(t, iss, ingress.EntraConfig{}, true)
	pub := &fakePublisher{}
	h, logs := newServer(t, ingress.Config{Publisher: pub, EventGridVerifiers: []ingress.Verifier{entra}})
	post := func(token, eventType, body string) response {
		req := httptest.NewRequest(http.MethodPost, "/eventgrid", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("aeg-event-type", eventType)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		return do(t, h, req)
	}
	good := entraToken(t, iss, nil)

	r := post(good, "SubscriptionValidation", validationBody)
	if r.status != 200 || r.body["validationResponse"] != "512d38b6-c7b8-40c8-89fe-f46f9e9622b6" {
		t.Fatalf("validation with token: %d %s", r.status, r.raw)
	}
	handshakeGolden(t, "subscription-validation", r)
	if !strings.Contains(logs.String(), "manual_validation_url") {
		t.Error("validation URL not logged for manual validation")
	}
	// Without the token the handshake is still answered: it enqueues
	// nothing, and Microsoft does not promise the token on handshakes.
	if r := post("", "SubscriptionValidation", validationBody); r.status != 200 {
		t.Errorf("validation without a token: %d %s", r.status, r.raw)
	}
	// A token that is present must be valid.
	bad := entraToken(t, iss, func(c map[string]any) { c["aud"] = "someone-else" })
	if r := post(bad, "SubscriptionValidation", validationBody); r.status != 401 {
		t.Errorf("validation with a bad token: %d", r.status)
	}
	// A handshake header cannot smuggle events in.
	if r := post("", "SubscriptionValidation", readTestdata(t, "eventgrid/IncomingCall.json")); r.status != 400 {
		t.Errorf("IncomingCall sent as a handshake: %d, want 400", r.status)
	}
	if pub.count() != 0 {
		t.Errorf("handshakes enqueued %d events", pub.count())
	}
	// Nor can an event delivery skip the token by mixing in a validation
	// event: it is neither answered nor queued, but dead-lettered, while the
	// delivery's real event is queued.
	mixed := strings.TrimSuffix(strings.TrimSpace(readTestdata(t, "eventgrid/IncomingCall.json")), "]") + "," + strings.Trim(validationBody, "[]") + "]"
	if r := post(good, "Notification", mixed); r.status != 200 || r.body["validationResponse"] != nil || r.body["dead_lettered"] != float64(1) {
		t.Errorf("validation event inside a delivery: %d %s, want 200 with it dead-lettered", r.status, r.raw)
	}
	if dead := pub.deadLettered(); len(dead) != 1 || dead[0].DeadLetterReason != relay.ReasonMalformedEvent || !strings.Contains(dead[0].DeadLetterDescription, "subscription validation") {
		t.Errorf("validation event inside a delivery: dead-lettered %+v", dead)
	}
	if r := post("", "Notification", readTestdata(t, "eventgrid/IncomingCall.json")); r.status != 401 {
		t.Errorf("delivery without a token: %d, want 401", r.status)
	}
	if pub.count() != 1 {
		t.Errorf("%d events queued, want the delivery's IncomingCall alone", pub.count())
	}
	// Deletion notices are acknowledged, not queued.
	if r := post(good, "SubscriptionDeletion", `[]`); r.status != 200 {
		t.Errorf("subscription deletion: %d", r.status)
	}
	if pub.count() != 1 {
		t.Errorf("deletion notice enqueued %d events", pub.count()-1)
	}
}

func TestAbuseProtectionHandshake(t *testing.T) {
	t.Parallel()
	h, _ := newServer(t, ingress.Config{Publisher: &fakePublisher{}, EventGridVerifiers: []ingress.Verifier{staticVerifier{true}},
		EventGridAllowedRate: "120"})
	options := func(origin string) response {
		req := testRequest(http.MethodOptions, "/eventgrid", "", "")
		if origin != "" {
			req.Header.Set("WebHook-Request-Origin", origin)
		}
		req.Header.Set("WebHook-Request-Rate", "120")
		return do(t, h, req)
	}
	r := options("eventgrid.azure.net")
	if r.status != 200 || r.header.Get("WebHook-Allowed-Origin") != "eventgrid.azure.net" || r.header.Get("WebHook-Allowed-Rate") != "120" {
		t.Fatalf("allowed origin: %d %v", r.status, r.header)
	}
	handshakeGolden(t, "abuse-protection-allowed", r)
	r = options("evil.example.com")
	if r.status != 403 || r.header.Get("WebHook-Allowed-Origin") != "" {
		t.Errorf("other origin: %d %v", r.status, r.header)
	}
	handshakeGolden(t, "abuse-protection-refused", redactID(r))
	if r := options(""); r.status != 400 {
		t.Errorf("no origin: %d", r.status)
	}
	// The handshake is verified too (the static verifier wants its header).
	req := httptest.NewRequest(http.MethodOptions, "/eventgrid", nil)
	req.Header.Set("WebHook-Request-Origin", "eventgrid.azure.net")
	if r := do(t, h, req); r.status != 401 {
		t.Errorf("unverified handshake: %d", r.status)
	}
}

// redactID replaces the random error id in a response body for golden files.
func redactID(r response) response {
	if id, ok := r.body["id"].(string); ok {
		r.raw = strings.ReplaceAll(r.raw, id, "<error id>")
	}
	return r
}

func TestEventGridRouteNeedsAVerifier(t *testing.T) {
	t.Parallel()
	h, _ := newServer(t, ingress.Config{Publisher: &fakePublisher{}, ACSVerifiers: []ingress.Verifier{staticVerifier{true}}})
	if r := do(t, h, egRequest("application/json", "Notification", readTestdata(t, "eventgrid/IncomingCall.json"))); r.status != 404 {
		t.Errorf("unconfigured /eventgrid: %d, want 404", r.status)
	}
}
