package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/hookbridge/hookbridge/relay"
)

// openAt opens a queue on path, as one more process, with the given
// duplicate window (0: the default), and closes it when the test ends.
func openAt(t *testing.T, path string, window time.Duration) *Queue {
	t.Helper()
	q, err := Open(context.Background(), Config{Path: path, DuplicateWindow: window}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	return q
}

func dupMsg(id, session string) relay.Message {
	return relay.Message{ID: id, SessionID: session, Body: []byte("{}")}
}

// receiveIDs receives for up to wait and returns what it got, in order.
func receiveIDs(t *testing.T, q *Queue, wait time.Duration) ([]*relay.Received, []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	got, err := q.Receive(ctx, 10)
	if err != nil && ctx.Err() == nil {
		t.Fatalf("Receive: %v", err)
	}
	var ids []string
	for _, m := range got {
		ids = append(ids, m.ID)
	}
	return got, ids
}

func mustSend(t *testing.T, q *Queue, msgs ...relay.Message) {
	t.Helper()
	if err := q.SendBatch(context.Background(), msgs); err != nil {
		t.Fatal(err)
	}
}

// A scan whose removal of a duplicate fails leaves the view as if it had
// not run: the next scan finds the row again and drops it, rather than
// leaving it in the table unseen, for another process to deliver out of
// order once the window has passed.
func TestFailedDuplicateRemovalIsRetried(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "q.db")
	q := openAt(t, path, time.Minute)
	other, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	mustSend(t, q, dupMsg("x", "k"))
	got, ids := receiveIDs(t, q, time.Second)
	if !slices.Equal(ids, []string{"x"}) {
		t.Fatalf("received %v, want x", ids)
	}
	first := got[0]
	// Deleting a waiting row fails, as on a full disk.
	if _, err := other.Exec(`CREATE TRIGGER fail_delete BEFORE DELETE ON queue WHEN OLD.delivery_count = 0
		BEGIN SELECT RAISE(ABORT, 'disk full'); END`); err != nil {
		t.Fatal(err)
	}
	mustSend(t, q, dupMsg("x", "k"), dupMsg("y", "k"))
	rctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	if _, err := q.Receive(rctx, 10); err == nil {
		t.Error("a receive whose removal of a duplicate failed reported no error")
	}
	cancel()
	q.writeMu.Lock()
	rebuilt := q.idx.lastSeq == 0
	q.writeMu.Unlock()
	if !rebuilt {
		t.Error("the view was kept after its scan failed and the transaction rolled back")
	}
	if _, err := other.Exec(`DROP TRIGGER fail_delete`); err != nil {
		t.Fatal(err)
	}
	if err := q.Complete(ctx, first); err != nil {
		t.Fatal(err)
	}
	got, ids = receiveIDs(t, q, 300*time.Millisecond)
	if !slices.Equal(ids, []string{"y"}) {
		t.Fatalf("then received %v, want y alone (x's repeat dropped)", ids)
	}
	if err := q.Complete(ctx, got[0]); err != nil {
		t.Fatal(err)
	}
	if active, _, err := q.Counts(ctx); err != nil || active != 0 {
		t.Errorf("%d messages left, %v; want none", active, err)
	}
}

// A scan whose removal of a repeat fails stops short of that row, so that
// even a view kept after the failure reads it again.
func TestScanStopsAtAFailedRemoval(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q := openAt(t, filepath.Join(t.TempDir(), "q.db"), time.Minute)
	mustSend(t, q, dupMsg("x", "k"), dupMsg("x", "k"), dupMsg("y", "k"))
	q.writeMu.Lock()
	defer q.writeMu.Unlock()
	defer q.settle.hold()()
	failing := errors.New("disk full")
	dropped, err := q.idx.refresh(ctx, q.settle, time.Minute.Nanoseconds(), func(int64) (bool, error) { return false, failing })
	if !errors.Is(err, failing) || dropped != 0 {
		t.Fatalf("refresh: %d dropped, %v; want the removal's error", dropped, err)
	}
	if q.idx.lastSeq != 1 {
		t.Errorf("the scan moved to row %d, want 1: the repeat (row 2) was not handled", q.idx.lastSeq)
	}
}

// A row that one process finds to be a repeat but another has already
// claimed is neither deleted nor skipped: it stays its session's head, and
// the session's next message waits for it. (Processes agree on what is a
// repeat unless their windows differ; here another process's entry
// appears in the log once the row is claimed.)
func TestClaimedRowIsNotDroppedAsARepeat(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "q.db")
	a := openAt(t, path, time.Minute)
	mustSend(t, a, dupMsg("x", "k"), dupMsg("y", "k"))
	b := openAt(t, path, time.Minute)
	got, ids := receiveIDs(t, b, time.Second)
	if !slices.Equal(ids, []string{"x"}) {
		t.Fatalf("b received %v, want x", ids)
	}
	x := got[0]
	// An entry that makes x a repeat, appended after b claimed it.
	release := a.settle.hold()
	_, err := a.settle.exec(ctx, sqlDedupAppend, "x", time.Now().Add(time.Minute).UnixNano())
	release()
	if err != nil {
		t.Fatal(err)
	}
	if _, ids := receiveIDs(t, a, 200*time.Millisecond); len(ids) != 0 {
		t.Fatalf("a received %v while x, the head, is locked by b", ids)
	}
	if err := b.Complete(ctx, x); err != nil {
		t.Fatalf("b completing x: %v (a deleted the row b holds)", err)
	}
	if _, ids := receiveIDs(t, a, time.Second); !slices.Equal(ids, []string{"y"}) {
		t.Errorf("a then received %v, want y", ids)
	}
}
