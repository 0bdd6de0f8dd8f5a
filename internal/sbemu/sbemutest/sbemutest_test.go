package sbemutest_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"
	"github.com/Azure/go-amqp"

	"github.com/hookbridge/hookbridge/internal/sbemu"
	"github.com/hookbridge/hookbridge/internal/sbemu/sbemutest"
)

// recorder is a testing.TB that keeps cleanups and errors for inspection.
type recorder struct {
	testing.TB
	cleanups []func()
	errs     []string
}

func (r *recorder) Helper()                   {}
func (r *recorder) Cleanup(f func())          { r.cleanups = append(r.cleanups, f) }
func (r *recorder) Errorf(f string, a ...any) { r.errs = append(r.errs, fmt.Sprintf(f, a...)) }
func (r *recorder) Fatalf(f string, a ...any) { r.TB.Fatalf(f, a...) }

func (r *recorder) runCleanups() {
	for i := len(r.cleanups) - 1; i >= 0; i-- {
		r.cleanups[i]()
	}
}

func TestExpectNoLeaks(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		closeConn bool
		wantLeak  bool
	}{
		{"closed client", true, false},
		{"client left open", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := &recorder{TB: t}
			srv := sbemutest.NewServer(r, sbemu.QueueConfig{Name: "q"})
			srv.ExpectNoLeaks()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			conn, err := amqp.Dial(ctx, "amqp://"+srv.Addr(), &amqp.ConnOptions{SASLType: amqp.SASLTypeAnonymous()})
			if err != nil {
				t.Fatal(err)
			}
			sess, err := conn.NewSession(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := sess.NewSender(ctx, "q", nil); err != nil {
				t.Fatal(err)
			}
			if tc.closeConn {
				conn.Close()
			}
			r.runCleanups()
			if !tc.closeConn {
				conn.Close()
			}
			leaked := len(r.errs) == 1 && strings.Contains(r.errs[0], "1 connections and 1 entity links still open")
			if leaked != tc.wantLeak || (!tc.wantLeak && len(r.errs) != 0) {
				t.Errorf("errors at cleanup: %q, want a leak: %v", r.errs, tc.wantLeak)
			}
		})
	}
}

// send sends msgs to queue with a new sender of c, closed after.
func send(ctx context.Context, t *testing.T, c *azservicebus.Client, queue string, msgs ...*azservicebus.Message) {
	t.Helper()
	snd, err := c.NewSender(queue, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer snd.Close(ctx)
	for _, m := range msgs {
		if err := snd.SendMessage(ctx, m, nil); err != nil {
			t.Fatalf("send: %v", err)
		}
	}
}

func TestNewClientSendsAndReceives(t *testing.T) {
	t.Parallel()
	srv := sbemutest.NewServer(t, sbemu.QueueConfig{Name: "q"})
	srv.ExpectNoLeaks()
	c := srv.NewClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	send(ctx, t, c, "q", &azservicebus.Message{Body: []byte("x")})
	rcv, err := c.NewReceiverForQueue("q", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer rcv.Close(ctx)
	msgs, err := rcv.ReceiveMessages(ctx, 1, nil)
	if err != nil || len(msgs) != 1 || string(msgs[0].Body) != "x" {
		t.Fatalf("receive: %v %v", msgs, err)
	}
	if err := rcv.CompleteMessage(ctx, msgs[0], nil); err != nil {
		t.Fatalf("complete: %v", err)
	}
	if st, err := srv.Stats("q"); err != nil || st != (sbemu.QueueStats{}) {
		t.Errorf("stats %+v %v", st, err)
	}
}

// TestDrainSession: DrainSession returns one session's messages in order,
// deletes them, and leaves the other sessions alone.
func TestDrainSession(t *testing.T) {
	t.Parallel()
	srv := sbemutest.NewServer(t, sbemu.QueueConfig{Name: "q", RequiresSession: true})
	srv.ExpectNoLeaks()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var msgs []*azservicebus.Message
	for i, key := range []string{"a", "b", "a", "a"} {
		id := fmt.Sprint("m", i)
		msgs = append(msgs, &azservicebus.Message{MessageID: &id, SessionID: &key, Body: []byte(id)})
	}
	send(ctx, t, srv.NewClient(t), "q", msgs...)
	for _, tt := range []struct {
		key  string
		want string
	}{
		{"a", "[m0 m2 m3]"},
		{"a", "[]"},
		{"b", "[m1]"},
	} {
		var got []string
		for _, m := range sbemutest.DrainSession(t, srv.Server, "q", tt.key) {
			got = append(got, m.MessageID)
		}
		if fmt.Sprint(got) != tt.want {
			t.Errorf("session %s: %v, want %s", tt.key, got, tt.want)
		}
	}
}
