package console

import (
	"context"
	"fmt"
	"slices"
	"testing"

	"github.com/hookbridge/hookbridge/consumer"
	"github.com/hookbridge/hookbridge/internal/sqlitetest"
	"github.com/hookbridge/hookbridge/relay"
	"github.com/hookbridge/hookbridge/relay/relaytest"
	"github.com/hookbridge/hookbridge/relay/sqlite"
)

// TestRestrict: a replay restricted to a selection acts on exactly the
// selected messages, across the listing's pages, whatever the filter
// matches besides.
func TestRestrict(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q := sqlitetest.Open(t, sqlite.Config{})
	var msgs []relay.Message
	for i := range 250 {
		msgs = append(msgs, relay.Message{ID: fmt.Sprintf("m%d", i), Body: []byte("{}"), Subject: "T"})
	}
	if err := q.SendBatch(ctx, msgs); err != nil {
		t.Fatal(err)
	}
	relaytest.DeadLetterAll(t, q, 250, "R", "")
	want := []int64{5, 140, 249}
	res, err := consumer.Replay(ctx, restrict(q, append(want, 9999)), consumer.DeadLetterFilter{}, consumer.ReplayOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var got []int64
	for _, d := range res.Selected {
		got = append(got, d.SequenceNumber)
	}
	if !slices.Equal(got, want) || res.Done != 3 {
		t.Errorf("replayed %v (done %d), want %v", got, res.Done, want)
	}
	// A filter narrows a selection further.
	res, err = consumer.Replay(ctx, restrict(q, []int64{6, 7}), consumer.DeadLetterFilter{IDs: []string{"m6"}}, consumer.ReplayOptions{DryRun: true})
	if err != nil || len(res.Selected) != 1 || res.Selected[0].ID != "m6" {
		t.Errorf("filtered selection: %+v, %v", res.Selected, err)
	}
	// No selection: the filter alone.
	if restrict(q, nil) != consumer.DeadLetterQueue(q) {
		t.Error("restrict(q, nil) is not q")
	}
}
