package sqlite_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hookbridge/hookbridge/internal/sqlitetest"
	"github.com/hookbridge/hookbridge/internal/testwait"
	"github.com/hookbridge/hookbridge/relay"
	"github.com/hookbridge/hookbridge/relay/sqlite"
)

// smallVolume mounts a tmpfs of size bytes for the test, or skips it where
// mounting is not allowed (it needs root).
func smallVolume(t *testing.T, size int) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "vol")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d", size), "tmpfs", dir).CombinedOutput()
	if err != nil {
		sqlitetest.NeedsPrivilege(t, fmt.Sprintf("a small volume needs mount -t tmpfs, which needs root: %v: %s", err, out))
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

func kilobyteMsg(id, session string) relay.Message {
	return relay.Message{ID: id, SessionID: session, Subject: "T", ContentType: "application/json",
		Body: []byte(fmt.Sprintf(`{"id":%q,"pad":%q}`, id, strings.Repeat("x", 1000)))}
}

// TestSmallVolume runs the queue on a 16 MB volume: under sustained load its
// write-ahead log stays bounded instead of filling the volume, and when the
// volume is filled by something else, sends fail and readiness says so,
// then both recover once space is freed.
func TestSmallVolume(t *testing.T) {
	t.Parallel()
	// The volume must hold the log's 8 MiB file limit and the database.
	volume, total := 16<<20, 16_000
	if raceEnabled {
		total = 10_000
	}
	dir := smallVolume(t, volume)
	path := filepath.Join(dir, "q.db")
	q := sqlitetest.Open(t, sqlite.Config{Path: path})

	// Sustained load: as many kilobyte messages as the volume has room.
	var largest atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			if fi, err := os.Stat(path + "-wal"); err == nil && fi.Size() > largest.Load() {
				largest.Store(fi.Size())
			}
		}
	}()
	received := make(chan error, 1)
	var got atomic.Int64
	go func() {
		n := 0
		for n < total {
			msgs, err := q.Receive(testwait.Context(t, 30*time.Second), 64)
			if err != nil {
				received <- err
				return
			}
			for _, m := range msgs {
				if err := q.Complete(context.Background(), m); err != nil {
					received <- err
					return
				}
			}
			n += len(msgs)
			got.Store(int64(n))
		}
		received <- nil
	}()
	for i := 0; i < total; i += 25 {
		for int64(i)-got.Load() > 1000 { // a backlog of at most 1 MB
			select {
			case err := <-received:
				t.Fatalf("receive under sustained load, after %d: %v", got.Load(), err)
			case <-time.After(time.Millisecond):
			}
		}
		batch := make([]relay.Message, 25)
		for j := range batch {
			batch[j] = kilobyteMsg(fmt.Sprintf("m-%d", i+j), fmt.Sprintf("call-%d", (i+j)%50))
		}
		if err := q.SendBatch(testwait.Context(t, 10*time.Second), batch); err != nil {
			t.Fatalf("send %d under sustained load: %v", i, err)
		}
	}
	if err := <-received; err != nil {
		t.Fatalf("receive under sustained load: %v", err)
	}
	close(stop)
	wg.Wait()
	if l := largest.Load(); l > 12<<20 {
		t.Errorf("the write-ahead log reached %d bytes; it should stay near its 8 MiB file limit", l)
	}
	t.Logf("largest write-ahead log: %d bytes", largest.Load())

	// Something else fills the volume.
	filler := filepath.Join(dir, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 64<<10)
	for {
		if _, err := f.Write(chunk); err != nil {
			break
		}
	}
	f.Close()
	// Sends that find room in the log's existing pages, or in pages the
	// database freed, may still succeed, and so may a readiness probe
	// between them; a growing backlog soon exhausts both, and then sends
	// fail and readiness says so.
	var sendErr, readyErr error
	for i := 0; i < 30_000 && readyErr == nil; i += 10 {
		batch := make([]relay.Message, 10)
		for j := range batch {
			batch[j] = kilobyteMsg(fmt.Sprintf("full-%d", i+j), "call-x")
		}
		if sendErr = q.SendBatch(testwait.Context(t, 10*time.Second), batch); sendErr == nil {
			continue
		}
		if !errors.Is(sendErr, relay.ErrUnavailable) || !strings.Contains(sendErr.Error(), "disk full") {
			t.Fatalf("send on a full volume: %v, want ErrUnavailable saying the disk is full", sendErr)
		}
		readyErr = q.Ready(testwait.Context(t, 10*time.Second))
	}
	if sendErr == nil || readyErr == nil {
		t.Fatalf("on a full volume: last send %v, Ready %v; want both to fail", sendErr, readyErr)
	}
	t.Logf("on the full volume: %v", sendErr)

	// Space comes back.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if err := q.Ready(testwait.Context(t, 10*time.Second)); err != nil {
		t.Fatalf("Ready after space was freed: %v", err)
	}
	if err := q.SendBatch(testwait.Context(t, 10*time.Second), []relay.Message{kilobyteMsg("after", "call-y")}); err != nil {
		t.Fatalf("send after space was freed: %v", err)
	}
}

// TestImmutableFileExplained makes the write-ahead log immutable (chattr
// +i) under a running queue: sends fail with a message that says what to
// fix, readiness fails, and both recover once the attribute is removed.
func TestImmutableFileExplained(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "q.db")
	q := sqlitetest.Open(t, sqlite.Config{Path: path})
	sendAll(t, q, kilobyteMsg("before", "call-1"))
	if out, err := exec.Command("chattr", "+i", path+"-wal").CombinedOutput(); err != nil {
		sqlitetest.NeedsPrivilege(t, fmt.Sprintf("chattr +i needs root and a file system with attributes: %v: %s", err, out))
	}
	t.Cleanup(func() { exec.Command("chattr", "-i", path+"-wal").Run() })
	err := q.SendBatch(testwait.Context(t, 10*time.Second), []relay.Message{kilobyteMsg("blocked", "call-1")})
	t.Logf("send to an immutable file: %v", err)
	if !errors.Is(err, relay.ErrUnavailable) || !strings.Contains(err.Error(), "chattr") {
		t.Fatalf("send to an immutable file: %v, want ErrUnavailable saying to check attributes (chattr)", err)
	}
	if err := q.Ready(testwait.Context(t, 10*time.Second)); err == nil {
		t.Fatal("Ready with an immutable log: nil")
	}
	if out, err := exec.Command("chattr", "-i", path+"-wal").CombinedOutput(); err != nil {
		t.Fatalf("chattr -i: %v: %s", err, out)
	}
	if err := q.Ready(testwait.Context(t, 10*time.Second)); err != nil {
		t.Fatalf("Ready after chattr -i: %v", err)
	}
	sendAll(t, q, kilobyteMsg("after", "call-1"))
}

// TestFailingCheckpointsMakeUnready makes the database file immutable:
// sends still commit (to the write-ahead log), but checkpoints fail, so
// the log would grow without bound; after UnreadyAfter, Ready says so, and
// it recovers once checkpoints succeed again.
func TestFailingCheckpointsMakeUnready(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "q.db")
	q := sqlitetest.Open(t, sqlite.Config{Path: path, UnreadyAfter: 1500 * time.Millisecond})
	sendAll(t, q, kilobyteMsg("before", "call-1"))
	if out, err := exec.Command("chattr", "+i", path).CombinedOutput(); err != nil {
		sqlitetest.NeedsPrivilege(t, fmt.Sprintf("chattr +i needs root and a file system with attributes: %v: %s", err, out))
	}
	t.Cleanup(func() { exec.Command("chattr", "-i", path).Run() })
	sendAll(t, q, kilobyteMsg("during", "call-1"))
	if err := q.Ready(testwait.Context(t, 10*time.Second)); err != nil {
		t.Fatalf("Ready right after checkpoints began failing: %v, want nil until UnreadyAfter", err)
	}
	var err error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if err = q.Ready(testwait.Context(t, 10*time.Second)); err != nil {
			break
		}
	}
	if err == nil || !strings.Contains(err.Error(), "checkpoints have failed") {
		t.Fatalf("Ready with checkpoints failing for longer than UnreadyAfter: %v, want it to say so", err)
	}
	if out, err := exec.Command("chattr", "-i", path).CombinedOutput(); err != nil {
		t.Fatalf("chattr -i: %v: %s", err, out)
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if err = q.Ready(testwait.Context(t, 10*time.Second)); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("Ready after the checkpoints recovered: %v", err)
	}
}
