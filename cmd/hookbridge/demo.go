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
	"github.com/hookbridge/hookbridge/ingress/devissuer"
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

// runDemo sends a whole call's Call Automation events through the HTTP path,
// one request at a time as ACS would, and waits until every one was
// delivered in order.
func runDemo(ctx context.Context, base string, iss *devissuer.Issuer, acs *ingress.ACSVerifier, rec *recorder, out io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, demoTimeout)
	defer cancel()
	for !acs.Ready() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("demo: the ACS verifier did not load the development keys: %w", context.Cause(ctx))
		case <-time.After(10 * time.Millisecond):
		}
	}
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
	fmt.Fprintf(out, "demo: sending a call of %d signed events to %s/acs/callbacks (call %s)\n", len(steps), base, correlationID)
	client := &http.Client{Timeout: 15 * time.Second}
	var sent []string
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
		if err := postEvent(ctx, client, base+ingress.PathACSCallbacks, token, body); err != nil {
			return fmt.Errorf("demo: %s: %w", step.typ, err)
		}
		sent = append(sent, id)
		fmt.Fprintf(out, "demo: accepted  %d/%d %s\n", i+1, len(steps), step.typ)
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

// postEvent sends one signed callback and requires a 200.
func postEvent(ctx context.Context, client *http.Client, url, token string, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("the ingress answered %s: %s", resp.Status, bytes.TrimSpace(answer))
	}
	return nil
}

func randomID() string {
	var b [16]byte
	rand.Read(b[:])
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}
