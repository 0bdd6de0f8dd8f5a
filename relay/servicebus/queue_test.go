package servicebus_test

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hookbridge/hookbridge/relay/relaytest"
	"github.com/hookbridge/hookbridge/relay/servicebus"
	"github.com/hookbridge/hookbridge/relay/servicebus/sbemu"
)

var queueSeq atomic.Int64

// emulator starts an in-process Service Bus emulator for the test.
func emulator(t testing.TB) *sbemu.Server {
	t.Helper()
	s, err := sbemu.New(sbemu.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// openEmulated creates a fresh queue with want's settings on emu and opens
// it through the SDK.
func openEmulated(t testing.TB, emu *sbemu.Server, want relaytest.Settings, sessions bool) (*servicebus.Queue, string) {
	t.Helper()
	name := fmt.Sprintf("q%d", queueSeq.Add(1))
	if err := emu.CreateQueue(sbemu.QueueConfig{
		Name:                                name,
		LockDuration:                        want.LockDuration,
		MaxDeliveryCount:                    want.MaxDeliveryCount,
		RequiresSession:                     sessions,
		RequiresDuplicateDetection:          want.DuplicateWindow > 0,
		DuplicateDetectionHistoryTimeWindow: want.DuplicateWindow,
	}); err != nil {
		t.Fatal(err)
	}
	q, err := servicebus.Open(context.Background(), servicebus.Config{
		Queue:            name,
		ConnectionString: emu.ConnectionString(),
		Sessions:         &sessions,
		SessionIdle:      200 * time.Millisecond,
		LockDuration:     want.LockDuration,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	return q, name
}

func TestConformanceEmulatorSessions(t *testing.T) {
	t.Parallel()
	emu := emulator(t)
	relaytest.Run(t, func(t *testing.T, want relaytest.Settings) (relaytest.Queue, relaytest.Settings) {
		q, _ := openEmulated(t, emu, want, true)
		return q, want
	})
}

// TestConformanceAzure runs the suite against a real Service Bus namespace.
func TestConformanceAzure(t *testing.T) {
	cs := os.Getenv("HOOKBRIDGE_TEST_SERVICEBUS_CONNECTION_STRING")
	if cs == "" {
		t.Skip("set HOOKBRIDGE_TEST_SERVICEBUS_CONNECTION_STRING (and HOOKBRIDGE_TEST_SERVICEBUS_QUEUE, a session-enabled queue with duplicate detection) to run the conformance suite against Azure Service Bus")
	}
	t.Skip("not yet")
}
