package servicebus_test

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus/admin"

	"github.com/hookbridge/hookbridge/internal/sbemu"
	"github.com/hookbridge/hookbridge/internal/sbemu/sbemutest"
	"github.com/hookbridge/hookbridge/internal/testrun"
	"github.com/hookbridge/hookbridge/relay/relaytest"
	"github.com/hookbridge/hookbridge/relay/servicebus"
)

var queueSeq atomic.Int64

// emulator starts an in-process Service Bus emulator for the test.
func emulator(t testing.TB) *sbemu.Server {
	t.Helper()
	return sbemutest.NewServer(t).Server
}

// openEmulated creates a fresh queue with want's settings on emu, opens it
// through the SDK and runs it.
func openEmulated(t testing.TB, emu *sbemu.Server, want relaytest.Settings, sessions bool) (*servicebus.Queue, string) {
	t.Helper()
	q, name := openEmulatedIdle(t, emu, want, sessions)
	runQueue(t, q)
	return q, name
}

// openEmulatedIdle is openEmulated without Run: the queue sends, and
// receives nothing from sessions until runQueue starts it.
func openEmulatedIdle(t testing.TB, emu *sbemu.Server, want relaytest.Settings, sessions bool) (*servicebus.Queue, string) {
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

// runQueue runs q's background loops (the session pool) until the test
// ends, as the worker command's errgroup does, and closes q.
func runQueue(t testing.TB, q *servicebus.Queue) {
	t.Helper()
	stop := testrun.Start(t, q.Run)
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("Run: %v", err)
		}
		q.Close()
	})
}

func TestConformanceEmulatorSessions(t *testing.T) {
	t.Parallel()
	emu := emulator(t)
	relaytest.Run(t, func(t *testing.T, want relaytest.Settings) (relaytest.Queue, relaytest.Settings) {
		q, _ := openEmulated(t, emu, want, true)
		return q, want
	})
}

// TestConformanceAzure runs the suite against a real Service Bus namespace:
// each test gets a fresh queue, created and deleted through the
// administration API (the connection string needs Manage rights).
func TestConformanceAzure(t *testing.T) {
	cs := os.Getenv("HOOKBRIDGE_TEST_SERVICEBUS_CONNECTION_STRING")
	if cs == "" {
		t.Skip("set HOOKBRIDGE_TEST_SERVICEBUS_CONNECTION_STRING (a namespace connection string with Manage rights; Standard tier or above) to run the conformance suite against Azure Service Bus")
	}
	t.Parallel()
	adm, err := admin.NewClientFromConnectionString(cs, nil)
	if err != nil {
		t.Fatal(err)
	}
	relaytest.Run(t, func(t *testing.T, want relaytest.Settings) (relaytest.Queue, relaytest.Settings) {
		got := want
		got.LockDuration = max(want.LockDuration, 5*time.Second) // Service Bus's minimum
		got.DuplicateWindow = max(want.DuplicateWindow, 20*time.Second)
		name := fmt.Sprintf("hookbridge-test-%d-%d", time.Now().UnixNano(), queueSeq.Add(1))
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if _, err := adm.CreateQueue(ctx, name, &admin.CreateQueueOptions{Properties: &admin.QueueProperties{
			LockDuration:                        to.Ptr(isoSeconds(got.LockDuration)),
			MaxDeliveryCount:                    to.Ptr(int32(got.MaxDeliveryCount)),
			RequiresSession:                     to.Ptr(true),
			RequiresDuplicateDetection:          to.Ptr(true),
			DuplicateDetectionHistoryTimeWindow: to.Ptr(isoSeconds(got.DuplicateWindow)),
		}}); err != nil {
			t.Fatalf("create queue %s: %v", name, err)
		}
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			adm.DeleteQueue(ctx, name, nil)
		})
		sessions := true
		q, err := servicebus.Open(context.Background(), servicebus.Config{Queue: name, ConnectionString: cs, Sessions: &sessions,
			SessionIdle: 500 * time.Millisecond, LockDuration: got.LockDuration}, nil)
		if err != nil {
			t.Fatal(err)
		}
		runQueue(t, q)
		return q, got
	})
}

func isoSeconds(d time.Duration) string { return fmt.Sprintf("PT%dS", int(d.Seconds())) }
