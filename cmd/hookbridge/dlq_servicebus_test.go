package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/hookbridge/hookbridge/internal/sbemu"
	"github.com/hookbridge/hookbridge/relay"
	"github.com/hookbridge/hookbridge/relay/relaytest"
)

// TestDLQCommandsOverServiceBus runs the dead-letter commands as a user
// would against a Service Bus queue, each a process of its own: a purge
// preview, then purges of one type while dead letters of another sit
// between them. Every run does all it selected; a run that cannot (the
// messages are held by someone else) says so and exits 1.
func TestDLQCommandsOverServiceBus(t *testing.T) {
	t.Parallel()
	emu := emulate(t, sbemu.QueueConfig{Name: "ev", RequiresSession: true, RequiresDuplicateDetection: true, LockDuration: time.Minute})
	q := sbQueue(t, emu, "ev")
	ctx := context.Background()
	var msgs []relay.Message
	for i := range 5 {
		typ := "Microsoft.Communication.PlayFailed"
		if i%2 == 1 {
			typ = "Microsoft.Communication.RecognizeFailed"
		}
		msgs = append(msgs, callEvent(t, typ, i, 0))
	}
	if err := q.SendBatch(ctx, msgs); err != nil {
		t.Fatal(err)
	}
	runCtx, stopRun := context.WithCancel(ctx)
	go q.Run(runCtx)
	relaytest.DeadLetterAll(t, q, len(msgs), "BackendRejected", "POST http://backend answered 400 Bad Request")
	stopRun()

	env := sbEnv(emu)
	dlq := func(args ...string) (string, string, int) {
		return runBinary(t, env, append([]string{"dlq"}, append(args, "--queue", "servicebus:///ev")...)...)
	}
	// The preview lists, deletes nothing, and exits 2.
	out, stderr, code := dlq("purge", "--type", "Microsoft.Communication.PlayFailed")
	if code != 2 || strings.Count(out, "\n") != 3 || !strings.Contains(stderr, "--yes") {
		t.Fatalf("purge preview: exit %d\n%s%s", code, out, stderr)
	}
	// At once, the purge deletes all three.
	_, stderr, code = dlq("purge", "--type", "Microsoft.Communication.PlayFailed", "--yes")
	if code != 0 || !strings.Contains(stderr, "purged 3 of 3 selected messages") {
		t.Fatalf("purge after the preview: exit %d: %s", code, stderr)
	}
	// The other type's dead letters, passed over by that purge, are free.
	out, stderr, code = dlq("replay", "--type", "Microsoft.Communication.RecognizeFailed", "--limit", "1")
	if code != 0 || !strings.Contains(stderr, "replayed 1 of 1 selected messages") {
		t.Fatalf("replay of the other type: exit %d: %s%s", code, out, stderr)
	}
	// Someone else holds the last one: the purge says so and exits 1.
	left, err := q.ListDeadLetters(ctx, 0, 10)
	if err != nil || len(left) != 1 {
		t.Fatalf("left: %v %v", left, err)
	}
	held, err := q.TakeDeadLetters(ctx, []int64{left[0].SequenceNumber})
	if err != nil || len(held) != 1 {
		t.Fatalf("take: %v %v", held, err)
	}
	_, stderr, code = dlq("purge", "--type", "Microsoft.Communication.RecognizeFailed", "--yes")
	if code != 1 || !strings.Contains(stderr, "purged 0 of 1 selected messages; 1 were gone or taken by someone else") {
		t.Fatalf("purge of a held message: exit %d: %s", code, stderr)
	}
	if err := q.ReleaseDeadLetter(ctx, held[0]); err != nil {
		t.Fatal(err)
	}
	_, stderr, code = dlq("purge", "--yes")
	if code != 0 || !strings.Contains(stderr, "purged 1 of 1 selected messages") {
		t.Fatalf("purge once released: exit %d: %s", code, stderr)
	}
	if st, _ := emu.Stats("ev"); st.DeadLettered != 0 {
		t.Errorf("%d dead letters left", st.DeadLettered)
	}
}
