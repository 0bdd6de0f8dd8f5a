package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/hookbridge/hookbridge/consumer"
	"github.com/hookbridge/hookbridge/ingress"
	"github.com/hookbridge/hookbridge/internal/devissuer"
	"github.com/hookbridge/hookbridge/schemas"
)

// demoTimeout bounds the whole demo.
const demoTimeout = 30 * time.Second

// recorder wraps the delivery target and notes each delivered event.
type recorder struct {
	next consumer.Handler
	out  io.Writer

	mu        sync.Mutex
	delivered map[string][]string // partition key → event IDs in delivery order
	changed   chan struct{}
}

func newRecorder(next consumer.Handler, out io.Writer) *recorder {
	return &recorder{next: next, out: out, delivered: map[string][]string{}, changed: make(chan struct{}, 1)}
}

// Handle delivers through the wrapped target, then records the event.
func (r *recorder) Handle(ctx context.Context, e *schemas.Event) error {
	if err := r.next.Handle(ctx, e); err != nil {
		return err
	}
	r.mu.Lock()
	r.delivered[e.PartitionKey] = append(r.delivered[e.PartitionKey], e.ID)
	r.mu.Unlock()
	select {
	case r.changed <- struct{}{}:
	default:
	}
	return nil
}

func (r *recorder) deliveredFor(key string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.delivered[key])
}

// demoEvent is one step of the sample call.
type demoEvent struct {
	typ  string
	data map[string]any
}

// runDemo plays a whole call through the HTTP path as ACS and Event Grid
// would: the Event Grid subscription handshake, the IncomingCall delivered
// by Event Grid, then the call's Call Automation callbacks, one request at a
// time. It waits until every event was delivered, in order.
func runDemo(ctx context.Context, base string, iss *devissuer.Issuer, vs []ingress.Verifier, rec *recorder, out io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, demoTimeout)
	defer cancel()
	for _, v := range vs {
		for !v.Ready() {
			select {
			case <-ctx.Done():
				return fmt.Errorf("demo: the %s verifier did not load the development keys: %w", v.Name(), context.Cause(ctx))
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
	client := &http.Client{Timeout: 15 * time.Second}
	entraToken, err := iss.EntraToken(devTenant, devEntraApp, ingress.EventGridAppID, true)
	if err != nil {
		return fmt.Errorf("demo: mint Entra token: %w", err)
	}
	if err := demoHandshake(ctx, client, base, entraToken); err != nil {
		return fmt.Errorf("demo: Event Grid subscription validation: %w", err)
	}
	fmt.Fprintln(out, "demo: Event Grid subscription validated (aeg-event-type: SubscriptionValidation)")
	callConnectionID := randomID()
	correlationID := randomID()
	common := func(extra map[string]any) map[string]any {
		d := map[string]any{
			"version":          "2024-09-15",
			"callConnectionId": callConnectionID,
			"serverCallId":     "demo-server-call-" + callConnectionID[:8],
			"correlationId":    correlationID,
		}
		for k, v := range extra {
			d[k] = v
		}
		return d
	}
	ok := map[string]any{"code": 200, "subCode": 0, "message": "Action completed successfully."}
	steps := []demoEvent{
		{"Microsoft.Communication.CallConnected", common(map[string]any{"operationContext": "answer", "resultInformation": ok})},
		{"Microsoft.Communication.PlayCompleted", common(map[string]any{"operationContext": "greeting", "resultInformation": ok})},
		{"Microsoft.Communication.RecognizeCompleted", common(map[string]any{"operationContext": "menu", "recognitionType": "dtmf",
			"dtmfResult": map[string]any{"tones": []string{"one"}}, "resultInformation": ok})},
		{"Microsoft.Communication.CallDisconnected", common(map[string]any{"resultInformation": map[string]any{"code": 200, "subCode": 7000, "message": "The conversation has ended."}})},
	}
	fmt.Fprintf(out, "demo: sending a call of %d signed events to %s (call %s)\n", len(steps)+1, base, correlationID)
	var sent []string
	incomingID := fmt.Sprintf("demo-%s-0", correlationID[:8])
	incoming, err := json.Marshal([]map[string]any{{
		"id":              incomingID,
		"topic":           "/subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/dev/providers/microsoft.communication/communicationservices/dev",
		"subject":         "/caller/4:+14255550123/recipient/8:acs:dev",
		"eventType":       "Microsoft.Communication.IncomingCall",
		"eventTime":       time.Now().UTC().Format(time.RFC3339Nano),
		"dataVersion":     "1.0",
		"metadataVersion": "1",
		"data": map[string]any{
			"to":                  map[string]any{"kind": "communicationUser", "rawId": "8:acs:dev", "communicationUser": map[string]any{"id": "8:acs:dev"}},
			"from":                map[string]any{"kind": "phoneNumber", "rawId": "4:+14255550123", "phoneNumber": map[string]any{"value": "+14255550123"}},
			"serverCallId":        "demo-server-call-" + callConnectionID[:8],
			"callerDisplayName":   "Demo Caller",
			"incomingCallContext": "demo-incoming-call-context",
			"correlationId":       correlationID,
		},
	}})
	if err != nil {
		return fmt.Errorf("demo: encode IncomingCall: %w", err)
	}
	if err := postJSON(ctx, client, base+ingress.PathEventGrid, entraToken, map[string]string{"aeg-event-type": "Notification"}, incoming, nil); err != nil {
		return fmt.Errorf("demo: IncomingCall: %w", err)
	}
	sent = append(sent, incomingID)
	fmt.Fprintf(out, "demo: accepted  1/%d Microsoft.Communication.IncomingCall (Event Grid, Entra token)\n", len(steps)+1)
	for i, step := range steps {
		id := fmt.Sprintf("demo-%s-%d", correlationID[:8], i+1)
		body, err := json.Marshal([]map[string]any{{
			"specversion":     "1.0",
			"id":              id,
			"source":          "calling/callConnections/" + callConnectionID,
			"subject":         "calling/callConnections/" + callConnectionID,
			"type":            step.typ,
			"time":            time.Now().UTC().Format(time.RFC3339Nano),
			"datacontenttype": "application/json",
			"data":            step.data,
		}})
		if err != nil {
			return fmt.Errorf("demo: encode event: %w", err)
		}
		token, err := iss.ACSToken("")
		if err != nil {
			return fmt.Errorf("demo: mint token: %w", err)
		}
		if err := postJSON(ctx, client, base+ingress.PathACSCallbacks, token, nil, body, nil); err != nil {
			return fmt.Errorf("demo: %s: %w", step.typ, err)
		}
		sent = append(sent, id)
		fmt.Fprintf(out, "demo: accepted  %d/%d %s (Call Automation, ACS token)\n", i+2, len(steps)+1, step.typ)
	}
	for {
		got := rec.deliveredFor(correlationID)
		if len(got) >= len(sent) {
			if !slices.Equal(got, sent) {
				return fmt.Errorf("demo: events delivered out of order: %v, sent %v", got, sent)
			}
			fmt.Fprintf(out, "demo: delivered all %d events of call %s in order\n", len(sent), correlationID)
			return nil
		}
		select {
		case <-rec.changed:
		case <-ctx.Done():
			return fmt.Errorf("demo: only %d of %d events delivered within %s", len(got), len(sent), demoTimeout)
		}
	}
}

// demoHandshake plays Event Grid's subscription validation.
func demoHandshake(ctx context.Context, client *http.Client, base, token string) error {
	code := randomID()
	body, _ := json.Marshal([]map[string]any{{
		"id": randomID(), "topic": "/dev", "subject": "", "eventType": ingress.TypeSubscriptionValidation,
		"eventTime": time.Now().UTC().Format(time.RFC3339Nano), "dataVersion": "2", "metadataVersion": "1",
		"data": map[string]string{"validationCode": code, "validationUrl": "https://rp-dev.eventgrid.azure.net:553/eventsubscriptions/demo/validate?id=" + code},
	}})
	var answer struct {
		ValidationResponse string `json:"validationResponse"`
	}
	if err := postJSON(ctx, client, base+ingress.PathEventGrid, token, map[string]string{"aeg-event-type": "SubscriptionValidation"}, body, &answer); err != nil {
		return err
	}
	if answer.ValidationResponse != code {
		return fmt.Errorf("validationResponse %q, want %q", answer.ValidationResponse, code)
	}
	return nil
}

// postJSON posts body with a bearer token and extra headers, requires a
// 200, and decodes the answer into out if it is not nil.
func postJSON(ctx context.Context, client *http.Client, url, token string, headers map[string]string, body []byte, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("the ingress answered %s: %s", resp.Status, bytes.TrimSpace(answer))
	}
	if out != nil {
		if err := json.Unmarshal(answer, out); err != nil {
			return fmt.Errorf("decode the answer: %w", err)
		}
	}
	return nil
}

func randomID() string {
	var b [16]byte
	rand.Read(b[:])
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}
