package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"

	"github.com/hookbridge/hookbridge/internal/freeport"
	"github.com/hookbridge/hookbridge/internal/testlog"
	"github.com/hookbridge/hookbridge/internal/testrun"
)

func TestRunServesTheDeployConfig(t *testing.T) {
	addr := freeport.Addr(t)
	var out, errOut testlog.Buffer
	stop := testrun.Start(t, func(ctx context.Context) error {
		return run(ctx, []string{"--listen", addr, "--config", "../../deploy/servicebus/Config.json"}, func(string) string { return "" }, &out, &errOut)
	})
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), "Endpoint=") {
		if time.Now().After(deadline) {
			t.Fatalf("no connection string printed: %s %s", out.String(), errOut.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	cs := strings.TrimSpace(out.String()[strings.Index(out.String(), "Endpoint="):])
	client, err := azservicebus.NewClientFromConnectionString(cs, nil)
	if err != nil {
		t.Fatal(err)
	}
	snd, _ := client.NewSender("hookbridge-events", nil)
	sid, id := "call-1", "m1"
	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer scancel()
	if err := snd.SendMessage(sctx, &azservicebus.Message{MessageID: &id, SessionID: &sid, Body: []byte("x")}, nil); err != nil {
		t.Fatalf("send to the configured queue: %v", err)
	}
	client.Close(sctx)
	if err := stop(); err != nil {
		t.Errorf("run: %v", err)
	}
	if err := run(context.Background(), []string{"--listen", addr}, func(string) string { return "" }, &out, &errOut); err == nil {
		t.Error("ran without --config")
	}
	if err := run(context.Background(), []string{"--config", "missing.json"}, func(string) string { return "" }, &out, &errOut); err == nil {
		t.Error("ran with a missing config")
	}
}
