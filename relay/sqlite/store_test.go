package sqlite_test

import (
	"bufio"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	_ "modernc.org/sqlite"

	"github.com/hookbridge/hookbridge/internal/sqlitetest"
	"github.com/hookbridge/hookbridge/internal/testlog"
	"github.com/hookbridge/hookbridge/internal/testwait"
	"github.com/hookbridge/hookbridge/relay"
	"github.com/hookbridge/hookbridge/relay/relaytest"
	"github.com/hookbridge/hookbridge/relay/sqlite"
)

func sendAll(t *testing.T, q *sqlite.Queue, msgs ...relay.Message) {
	t.Helper()
	if err := q.SendBatch(testwait.Context(t, 10*time.Second), msgs); err != nil {
		t.Fatalf("SendBatch: %v", err)
	}
}

// drain receives and completes until nothing arrives for quiet, and returns
// the IDs in delivery order.
func drain(t *testing.T, q *sqlite.Queue, quiet time.Duration) []string {
	t.Helper()
	var ids []string
	for {
		ctx, cancel := context.WithTimeout(context.Background(), quiet)
		msgs, err := q.Receive(ctx, 16)
		cancel()
		if errors.Is(err, context.DeadlineExceeded) {
			return ids
		}
		if err != nil {
			t.Fatalf("Receive: %v", err)
		}
		for _, m := range msgs {
			ids = append(ids, m.ID)
			if err := q.Complete(testwait.Context(t, 10*time.Second), m); err != nil {
				t.Fatalf("Complete: %v", err)
			}
		}
	}
}

func TestDuplicatesDropped(t *testing.T) {
	t.Parallel()
	t.Run("after the original was delivered", func(t *testing.T) {
		t.Parallel()
		q := sqlitetest.Open(t, sqlite.Config{DuplicateWindow: time.Minute})
		sendAll(t, q, relaytest.Msg("a", "call-1"))
		if got := drain(t, q, 300*time.Millisecond); len(got) != 1 {
			t.Fatalf("first delivery: got %v", got)
		}
		sendAll(t, q, relaytest.Msg("a", "call-1"), relaytest.Msg("b", "call-1"))
		if got := drain(t, q, 300*time.Millisecond); strings.Join(got, ",") != "b" {
			t.Fatalf("after a redelivery of a: got %v, want only b", got)
		}
		if active, _, _ := q.Counts(testwait.Context(t, time.Second)); active != 0 {
			t.Errorf("%d messages left; the duplicate should be gone", active)
		}
	})
	t.Run("twice in one batch", func(t *testing.T) {
		t.Parallel()
		q := sqlitetest.Open(t, sqlite.Config{})
		sendAll(t, q, relaytest.Msg("a", ""), relaytest.Msg("a", ""), relaytest.Msg("c", ""))
		if got := drain(t, q, 300*time.Millisecond); len(got) != 2 {
			t.Fatalf("got %v, want a and c once each", got)
		}
	})
	t.Run("sent within the window, delivered after it", func(t *testing.T) {
		t.Parallel()
		q := sqlitetest.Open(t, sqlite.Config{DuplicateWindow: 300 * time.Millisecond})
		sendAll(t, q, relaytest.Msg("a", "k"))
		sendAll(t, q, relaytest.Msg("a", "k"))
		time.Sleep(500 * time.Millisecond) // the window has passed, nothing was delivered yet
		if got := drain(t, q, 300*time.Millisecond); len(got) != 1 {
			t.Fatalf("got %v, want a once", got)
		}
	})
	t.Run("after the window", func(t *testing.T) {
		t.Parallel()
		q := sqlitetest.Open(t, sqlite.Config{DuplicateWindow: 200 * time.Millisecond})
		sendAll(t, q, relaytest.Msg("a", ""))
		drain(t, q, 100*time.Millisecond)
		time.Sleep(300 * time.Millisecond)
		sendAll(t, q, relaytest.Msg("a", ""))
		if got := drain(t, q, 300*time.Millisecond); len(got) != 1 {
			t.Fatalf("got %v, want a delivered again once the window passed", got)
		}
	})
	t.Run("a repeat of the copy sent after the window", func(t *testing.T) {
		t.Parallel()
		q := sqlitetest.Open(t, sqlite.Config{DuplicateWindow: time.Second})
		sendAll(t, q, relaytest.Msg("a", "k"))
		time.Sleep(1100 * time.Millisecond)
		// Without a partition key, so that both are handed out at once.
		sendAll(t, q, relaytest.Msg("a", "")) // a new message: the first one's window has passed
		sendAll(t, q, relaytest.Msg("a", "")) // a duplicate of that one
		if got := drain(t, q, 300*time.Millisecond); len(got) != 2 {
			t.Fatalf("got %v, want a twice: the first, and the one sent after its window", got)
		}
	})
	t.Run("seen by another process", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(t.TempDir(), "q.db")
		first := sqlitetest.Open(t, sqlite.Config{Path: path})
		sendAll(t, first, relaytest.Msg("a", "k"))
		drain(t, first, 200*time.Millisecond)
		second := sqlitetest.Open(t, sqlite.Config{Path: path}) // opened after a was delivered
		sendAll(t, second, relaytest.Msg("a", "k"), relaytest.Msg("b", "k"))
		if got := drain(t, second, 300*time.Millisecond); strings.Join(got, ",") != "b" {
			t.Fatalf("got %v, want only b", got)
		}
	})
	t.Run("off", func(t *testing.T) {
		t.Parallel()
		q := sqlitetest.Open(t, sqlite.Config{DuplicateWindow: -1})
		sendAll(t, q, relaytest.Msg("a", ""), relaytest.Msg("a", ""))
		if got := drain(t, q, 300*time.Millisecond); len(got) != 2 {
			t.Fatalf("got %v, want both", got)
		}
	})
}

// TestProcessesShareSessions has two queue instances on one file, as two
// worker processes, receive concurrently: every message is delivered once,
// and each session's messages in order, one at a time.
func TestProcessesShareSessions(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "q.db")
	a := sqlitetest.Open(t, sqlite.Config{Path: path})
	b := sqlitetest.Open(t, sqlite.Config{Path: path})
	const sessions, per = 12, 40
	for i := range per {
		var batch []relay.Message
		for s := range sessions {
			batch = append(batch, relaytest.Msg(fmt.Sprintf("s%d-%03d", s, i), fmt.Sprintf("s%d", s)))
		}
		sendAll(t, a, batch...)
	}
	var mu sync.Mutex
	inFlight := map[string]bool{}
	last := map[string]string{}
	seen := map[string]bool{}
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for _, q := range []*sqlite.Queue{a, b, a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				msgs, err := q.Receive(ctx, 3)
				cancel()
				if err != nil {
					if !errors.Is(err, context.DeadlineExceeded) {
						errs <- err
					}
					return
				}
				for _, m := range msgs {
					mu.Lock()
					if inFlight[m.SessionID] {
						errs <- fmt.Errorf("session %s handed out twice at once (%s)", m.SessionID, m.ID)
					}
					if seen[m.ID] {
						errs <- fmt.Errorf("%s delivered twice", m.ID)
					}
					if m.ID <= last[m.SessionID] {
						errs <- fmt.Errorf("%s delivered after %s", m.ID, last[m.SessionID])
					}
					inFlight[m.SessionID], seen[m.ID], last[m.SessionID] = true, true, m.ID
					mu.Unlock()
					time.Sleep(time.Millisecond)
					mu.Lock()
					inFlight[m.SessionID] = false
					mu.Unlock()
					if err := q.Complete(context.Background(), m); err != nil {
						errs <- err
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if len(seen) != sessions*per {
		t.Errorf("delivered %d of %d messages", len(seen), sessions*per)
	}
}

func TestDeadLetterOnSend(t *testing.T) {
	t.Parallel()
	q := sqlitetest.Open(t, sqlite.Config{})
	bad := relaytest.Msg("bad-1", "call-1")
	bad.DeadLetterReason = relay.ReasonMalformedEvent
	bad.DeadLetterDescription = `attribute "source" is required`
	sendAll(t, q, bad, relaytest.Msg("good-1", "call-1"))
	sendAll(t, q, bad) // a sender's retry
	if got := drain(t, q, 300*time.Millisecond); strings.Join(got, ",") != "good-1" {
		t.Fatalf("delivered %v, want only good-1", got)
	}
	dls, err := q.ListDeadLetters(testwait.Context(t, time.Second), 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(dls) != 1 {
		t.Fatalf("dead-letter queue holds %d messages, want 1", len(dls))
	}
	d := dls[0]
	if d.ID != "bad-1" || d.Reason != relay.ReasonMalformedEvent || d.Description != bad.DeadLetterDescription ||
		string(d.Body) != string(bad.Body) || d.SessionID != "call-1" || d.Properties[relay.PropID] != "bad-1" {
		t.Errorf("dead letter = %+v", d)
	}
}

// TestMigratesVersion1File opens a file written by the previous layout and
// finds its messages, delivery counts, dead letters and duplicate window.
func TestMigratesVersion1File(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "old.db")
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UnixNano()
	for _, stmt := range []string{
		`PRAGMA journal_mode = WAL`,
		`CREATE TABLE messages (seq INTEGER PRIMARY KEY AUTOINCREMENT, message_id TEXT NOT NULL, session_id TEXT NOT NULL,
			subject TEXT NOT NULL, content_type TEXT NOT NULL, properties BLOB, body BLOB NOT NULL, enqueued_at INTEGER NOT NULL,
			visible_at INTEGER NOT NULL, locked_until INTEGER NOT NULL DEFAULT 0, lock_token TEXT, delivery_count INTEGER NOT NULL DEFAULT 0)`,
		`CREATE TABLE deadletters (seq INTEGER PRIMARY KEY, message_id TEXT NOT NULL, session_id TEXT NOT NULL, subject TEXT NOT NULL,
			content_type TEXT NOT NULL, properties BLOB, body BLOB NOT NULL, enqueued_at INTEGER NOT NULL, delivery_count INTEGER NOT NULL,
			reason TEXT NOT NULL, description TEXT NOT NULL, dead_lettered_at INTEGER NOT NULL, locked_until INTEGER NOT NULL DEFAULT 0, lock_token TEXT)`,
		`CREATE TABLE dedup (message_id TEXT PRIMARY KEY, expires_at INTEGER NOT NULL) WITHOUT ROWID`,
		fmt.Sprintf(`INSERT INTO messages (message_id, session_id, subject, content_type, properties, body, enqueued_at, visible_at, locked_until, lock_token, delivery_count)
			VALUES ('m1', 'call-1', 'T', 'application/json', '{"cloudEvents_id":"m1","hookbridge_replay_count":2}', '{"n":1}', %[1]d, %[1]d, %[2]d, 'tok', 2),
			       ('m2', 'call-1', 'T', 'application/json', NULL, '{"n":2}', %[1]d, %[1]d, 0, NULL, 0)`, now, now+int64(time.Hour)),
		fmt.Sprintf(`INSERT INTO deadletters (seq, message_id, session_id, subject, content_type, properties, body, enqueued_at, delivery_count, reason, description, dead_lettered_at)
			VALUES (7, 'd1', '', 'T', 'application/json', '{"x":true}', '{"n":7}', %[1]d, 10, 'MaxDeliveryCountExceeded', 'too many', %[1]d)`, now),
		fmt.Sprintf(`INSERT INTO dedup VALUES ('gone-before', %d)`, now+int64(time.Hour)),
	} {
		if _, err := db.Exec(stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	db.Close()

	q := sqlitetest.Open(t, sqlite.Config{Path: path})
	r, err := q.Receive(testwait.Context(t, 5*time.Second), 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(r) != 1 || r[0].ID != "m1" || r[0].DeliveryCount != 3 || string(r[0].Body) != `{"n":1}` ||
		r[0].Properties[relay.PropReplayCount] != int64(2) || r[0].SequenceNumber != 1 {
		t.Fatalf("first receive = %+v; want m1 alone, its third delivery, its lock released by the upgrade", r)
	}
	if err := q.Complete(testwait.Context(t, time.Second), r[0]); err != nil {
		t.Fatal(err)
	}
	sendAll(t, q, relaytest.Msg("gone-before", "call-1"), relaytest.Msg("new", "call-1"))
	if got := drain(t, q, 300*time.Millisecond); strings.Join(got, ",") != "m2,new" {
		t.Errorf("then delivered %v, want m2,new (gone-before is a duplicate)", got)
	}
	dls, err := q.ListDeadLetters(testwait.Context(t, time.Second), 0, 10)
	if err != nil || len(dls) != 1 || dls[0].ID != "d1" || dls[0].SequenceNumber != 7 || dls[0].Properties["x"] != true {
		t.Fatalf("dead letters = %+v, %v", dls, err)
	}
	sendAll(t, q, relaytest.Msg("after", ""))
	r, err = q.Receive(testwait.Context(t, 5*time.Second), 1)
	if err != nil || r[0].SequenceNumber <= 7 {
		t.Fatalf("a new message got sequence number %v (%v); numbers must never be reused", r, err)
	}
}

// TestOpenNewFileTogether opens one new file from many instances at once,
// as an ingress and its workers started together do: none may fail on the
// switch to write-ahead logging.
func TestOpenNewFileTogether(t *testing.T) {
	t.Parallel()
	for round := range 5 {
		path := filepath.Join(t.TempDir(), fmt.Sprintf("new-%d.db", round))
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				q, err := sqlite.Open(context.Background(), sqlite.Config{Path: path}, nil)
				if err != nil {
					errs <- err
					return
				}
				errs <- q.SendBatch(context.Background(), []relay.Message{relaytest.Msg(fmt.Sprintf("m-%p", q), "")})
				q.Close()
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Errorf("round %d: %v", round, err)
			}
		}
	}
}

func TestOpenExplainsBadPaths(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := filepath.Join(dir, "plain-file")
	if err := os.WriteFile(file, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	notADB := filepath.Join(dir, "not-a-db")
	if err := os.WriteFile(notADB, []byte(strings.Repeat("this is not a database ", 100)), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		path, want string
	}{
		{filepath.Join(dir, "missing", "q.db"), "does not exist; create it"},
		{filepath.Join(file, "q.db"), "is not a directory"},
		{notADB, "not a hookbridge queue"},
	} {
		_, err := sqlite.Open(context.Background(), sqlite.Config{Path: tt.path}, nil)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Open(%s) = %v, want an error saying %q", tt.path, err, tt.want)
		}
	}
}

// TestWALDeletedStopsAcknowledging deletes the write-ahead log under a
// running queue, as an operator cleaning up files might: the queue must stop
// acknowledging (sends fail, readiness fails) rather than write to an
// unlinked file, and what it had acknowledged must survive the process
// being killed.
func TestWALDeletedStopsAcknowledging(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "q.db")
	cmd, out, stderr := startChild(t, walChildEnv, path)
	var acked []string
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "ack "):
			acked = append(acked, strings.TrimPrefix(line, "ack "))
		case strings.HasPrefix(line, "refused "):
			if !strings.Contains(line, "write-ahead log") {
				t.Errorf("send after the deletion: %s", line)
			}
		case strings.HasPrefix(line, "unready "):
			if !strings.Contains(line, "restart") {
				t.Errorf("readiness after the deletion: %s", line)
			}
			cmd.Process.Signal(syscall.SIGKILL)
		default:
			t.Errorf("child: %s", line)
		}
	}
	cmd.Wait()
	if len(acked) == 0 {
		t.Fatalf("child acknowledged nothing: %s", stderr.String())
	}
	q := sqlitetest.Open(t, sqlite.Config{Path: path})
	got := map[string]bool{}
	for _, id := range drain(t, q, 300*time.Millisecond) {
		got[id] = true
	}
	for _, id := range acked {
		if !got[id] {
			t.Errorf("acknowledged %s lost", id)
		}
	}
}

const walChildEnv = "HOOKBRIDGE_TEST_WAL_CHILD_DB"

// walChild sends and acknowledges messages, deletes its own write-ahead
// log, reports what the next send and readiness say, and waits to be killed.
func walChild(path string) {
	ctx := context.Background()
	q, err := sqlite.Open(ctx, sqlite.Config{Path: path}, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	for i := range 50 {
		id := fmt.Sprintf("before-%d", i)
		if err := q.SendBatch(ctx, []relay.Message{relaytest.Msg(id, "call-1")}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		fmt.Printf("ack %s\n", id)
	}
	if err := os.Remove(path + "-wal"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	for i := range 3 {
		id := fmt.Sprintf("after-%d", i)
		if err := q.SendBatch(ctx, []relay.Message{relaytest.Msg(id, "call-1")}); err != nil {
			fmt.Printf("refused %s: %v\n", id, err)
		} else {
			fmt.Printf("ack %s\n", id)
		}
	}
	fmt.Printf("unready %v\n", q.Ready(ctx))
	select {}
}

// TestPrefetchGivesBack: a receive claims more than it was asked for and
// keeps the rest for the next receives; what is kept when the queue closes
// is given back unseen, its delivery not counted, and so is a kept message
// whose lock is half gone.
func TestPrefetchGivesBack(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "q.db")
	q, err := sqlite.Open(context.Background(), sqlite.Config{Path: path, LockDuration: 400 * time.Millisecond}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 6 {
		sendAll(t, q, relaytest.Msg(fmt.Sprintf("m%d", i), ""))
	}
	got, err := q.Receive(testwait.Context(t, 5*time.Second), 1)
	if err != nil || len(got) != 1 {
		t.Fatalf("receive: %v %v", got, err)
	}
	more, err := q.Receive(testwait.Context(t, 5*time.Second), 2)
	if err != nil || len(more) != 2 {
		t.Fatalf("second receive: %v %v", more, err)
	}
	time.Sleep(250 * time.Millisecond) // the kept three have less than half their lock left
	again, err := q.Receive(testwait.Context(t, 5*time.Second), 1)
	if err != nil || len(again) != 1 || again[0].DeliveryCount != 1 {
		t.Fatalf("after the kept locks ran down: %+v %v, want a fresh claim, delivery 1", again, err)
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // every lock handed out has expired
	q2 := sqlitetest.Open(t, sqlite.Config{Path: path})
	counts := map[string]int{}
	for len(counts) < 6 {
		msgs, err := q2.Receive(testwait.Context(t, 5*time.Second), 6)
		if err != nil {
			t.Fatalf("after reopening, got %v: %v", counts, err)
		}
		for _, m := range msgs {
			counts[m.ID] = m.DeliveryCount
			q2.Complete(context.Background(), m)
		}
	}
	handedOut := map[string]bool{got[0].ID: true, more[0].ID: true, more[1].ID: true, again[0].ID: true}
	for id, n := range counts {
		if want := 1; handedOut[id] {
			want = 2
			if n != want {
				t.Errorf("%s handed out once, then delivered with count %d, want %d", id, n, want)
			}
		} else if n != want {
			t.Errorf("%s never handed out, delivered with count %d, want %d: a kept message's claim was counted", id, n, want)
		}
	}
}

// TestCloseWhileBusy runs readers side by side (as /readyz, a metrics
// scrape and the console do) with the background work, then closes the
// queue mid-statement: each reader must get its own right answer, Close must
// wait for them, and later ones must fail with relay.ErrClosed (not touch a
// freed connection, which crashes the process).
func TestCloseWhileBusy(t *testing.T) {
	t.Parallel()
	for round := range 20 {
		q, err := sqlite.Open(context.Background(), sqlite.Config{Path: filepath.Join(t.TempDir(), fmt.Sprintf("q%d.db", round))}, nil)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			q.Run(ctx)
		}()
		for range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for ctx.Err() == nil {
					active, dead, err := q.Counts(ctx)
					if err != nil {
						if !errors.Is(err, relay.ErrClosed) && ctx.Err() == nil {
							t.Errorf("round %d: counting while the queue closes: %v, want relay.ErrClosed", round, err)
						}
						return
					}
					if active > 1 || dead != 0 {
						t.Errorf("round %d: counted %d active and %d dead-lettered, want at most 1 and 0: concurrent readers saw each other's rows", round, active, dead)
						return
					}
				}
			}()
		}
		sendAll(t, q, relaytest.Msg(fmt.Sprintf("m%d", round), ""))
		time.Sleep(time.Duration(round%7) * 30 * time.Millisecond)
		if err := q.Close(); err != nil {
			t.Errorf("round %d: close: %v", round, err)
		}
		cancel()
		wg.Wait()
	}
}

// TestSendRacingClose closes the queue under a stream of sends: every
// acknowledged message is stored, a send that loses the race fails with
// relay.ErrClosed (a retryable refusal, never "the log was deleted"), and
// the closing queue does not mistake the log it removes for a deleted one.
func TestSendRacingClose(t *testing.T) {
	t.Parallel()
	for round := range 30 {
		path := filepath.Join(t.TempDir(), fmt.Sprintf("q%d.db", round))
		var logs testlog.Buffer
		q, err := sqlite.Open(context.Background(), sqlite.Config{Path: path}, slog.New(slog.NewTextHandler(&logs, nil)))
		if err != nil {
			t.Fatal(err)
		}
		var mu sync.Mutex
		var acked []string
		var wg sync.WaitGroup
		for g := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					id := fmt.Sprintf("g%d-%d", g, i)
					if err := q.SendBatch(context.Background(), []relay.Message{relaytest.Msg(id, "")}); err != nil {
						if !errors.Is(err, relay.ErrClosed) {
							t.Errorf("round %d: send %s as the queue closed: %v, want relay.ErrClosed", round, id, err)
						}
						return
					}
					mu.Lock()
					acked = append(acked, id)
					mu.Unlock()
				}
			}()
		}
		time.Sleep(time.Duration(5+round%10) * time.Millisecond)
		if err := q.Close(); err != nil {
			t.Errorf("round %d: close: %v", round, err)
		}
		wg.Wait()
		if s := logs.String(); strings.Contains(s, "write-ahead log was deleted") {
			t.Errorf("round %d: the closing queue reported its own log as deleted:\n%s", round, s)
		}
		q2, err := sqlite.Open(context.Background(), sqlite.Config{Path: path}, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, id := range acked {
			if res, err := q2.Find(context.Background(), relay.FindQuery{ID: id}); err != nil || len(res.Messages) != 1 {
				t.Errorf("round %d: acknowledged %s: found %d (%v), want 1", round, id, len(res.Messages), err)
			}
		}
		q2.Close()
	}
}

// TestCloseGivesBackEveryPrefetch closes the queue while receivers claim
// more than they hand out: whatever was not handed out is available at
// once after reopening, not locked until its lock expires.
func TestCloseGivesBackEveryPrefetch(t *testing.T) {
	t.Parallel()
	for round := range 15 {
		path := filepath.Join(t.TempDir(), fmt.Sprintf("q%d.db", round))
		cfg := sqlite.Config{Path: path, LockDuration: time.Minute, Prefetch: 8}
		q, err := sqlite.Open(context.Background(), cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		const total = 40
		for i := range total {
			sendAll(t, q, relaytest.Msg(fmt.Sprintf("m%d", i), fmt.Sprintf("s%d", i)))
		}
		var mu sync.Mutex
		handed := map[string]bool{}
		var wg sync.WaitGroup
		for range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					msgs, err := q.Receive(context.Background(), 1)
					if err != nil {
						return
					}
					mu.Lock()
					for _, m := range msgs {
						handed[m.ID] = true
					}
					mu.Unlock()
				}
			}()
		}
		time.Sleep(time.Duration(round%5) * time.Millisecond)
		if err := q.Close(); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
		q2 := sqlitetest.Open(t, cfg)
		want := total - len(handed)
		got := 0
		for got < want {
			msgs, err := q2.Receive(testwait.Context(t, 3*time.Second), total)
			if err != nil {
				t.Fatalf("round %d: after reopening, %d of the %d messages never handed out are available (%v); the rest stayed locked", round, got, want, err)
			}
			for _, m := range msgs {
				if handed[m.ID] {
					t.Errorf("round %d: %s was handed out before the close, and is available again before its lock expired", round, m.ID)
				}
				got++
			}
		}
	}
}

// TestDeadlineDuringCommitLeavesQueueUsable sends with deadlines that end
// around BEGIN and COMMIT: whatever each such send answers, the next send
// without a deadline succeeds, and every acknowledged message is stored.
func TestDeadlineDuringCommitLeavesQueueUsable(t *testing.T) {
	t.Parallel()
	q := sqlitetest.Open(t, sqlite.Config{})
	var acked []string
	for i := range 300 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(i%80)*time.Microsecond)
		id := fmt.Sprintf("a%d", i)
		err := q.SendBatch(ctx, []relay.Message{relaytest.Msg(id, "")})
		cancel()
		if err == nil {
			acked = append(acked, id)
			continue
		}
		id = fmt.Sprintf("b%d", i)
		if err := q.SendBatch(context.Background(), []relay.Message{relaytest.Msg(id, "")}); err != nil {
			t.Fatalf("send %d: after a send whose deadline ended, a send without one failed: %v", i, err)
		}
		acked = append(acked, id)
	}
	stored := map[string]bool{}
	for _, id := range drain(t, q, 200*time.Millisecond) {
		stored[id] = true
	}
	for _, id := range acked {
		if !stored[id] {
			t.Errorf("acknowledged %s is not in the queue", id)
		}
	}
}

// TestOpenRefusesAnotherApplicationsDatabase: a path naming a SQLite
// database that is not a hookbridge queue is refused, and the database is
// left as it was: no tables added, its journal mode unchanged.
func TestOpenRefusesAnotherApplicationsDatabase(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "app.db")
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if _, err := sqlite.Open(context.Background(), sqlite.Config{Path: path}, nil); err == nil || !strings.Contains(err.Error(), "not a hookbridge queue (its tables: users)") {
		t.Fatalf("Open of another application's database: %v, want a refusal naming its tables", err)
	}
	db, err = sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var tables int
	var mode string
	if err := db.QueryRow(`SELECT count(*) FROM sqlite_master WHERE type = 'table'`).Scan(&tables); err != nil || tables != 1 {
		t.Errorf("tables after the refusal: %d (%v), want the 1 it had", tables, err)
	}
	if err := db.QueryRow(`PRAGMA journal_mode`).Scan(&mode); err != nil || mode != "delete" {
		t.Errorf("journal mode after the refusal: %q (%v), want delete, as it was", mode, err)
	}
	if _, err := os.Stat(path + "-notify"); !os.IsNotExist(err) {
		t.Errorf("the refused path got a notification file beside it: %v", err)
	}
}
