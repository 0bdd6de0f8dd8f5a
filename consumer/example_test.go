package consumer_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/hookbridge/hookbridge/consumer"
	"github.com/hookbridge/hookbridge/relay"
	"github.com/hookbridge/hookbridge/relay/sqlite"
	"github.com/hookbridge/hookbridge/schemas"
)

// A custom Go handler: answer calls from known numbers, dead-letter the rest.
func Example() {
	dir, _ := os.MkdirTemp("", "example")
	defer os.RemoveAll(dir)
	q, err := sqlite.Open(context.Background(), sqlite.Config{Path: filepath.Join(dir, "q.db")}, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer q.Close()

	// What the ingress would have queued.
	ev := schemas.Event{ID: "evt-1", Source: "calling/callConnections/c1", Type: "Microsoft.Communication.CallConnected",
		Data: json.RawMessage(`{"callConnectionId":"c1","correlationId":"call-1"}`), PartitionKey: "call-1"}
	msg, _ := relay.NewMessage(&ev)
	q.SendBatch(context.Background(), []relay.Message{msg})

	ctx, stop := context.WithCancel(context.Background())
	handler := consumer.HandlerFunc(func(ctx context.Context, e *schemas.Event) error {
		defer stop()
		if e.PartitionKey == "" {
			return consumer.Permanent("NoCall", errors.New("event belongs to no call"))
		}
		fmt.Printf("%s for call %s\n", e.Type, e.PartitionKey)
		return nil // delivered: the message is completed
	})
	w, err := consumer.New(q, handler, consumer.Config{Concurrency: 4})
	if err != nil {
		fmt.Println(err)
		return
	}
	if err := w.Run(ctx); err != nil {
		fmt.Println(err)
	}
	// Output: Microsoft.Communication.CallConnected for call call-1
}
