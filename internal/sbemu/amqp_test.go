package sbemu_test

import (
	"testing"

	"github.com/Azure/go-amqp"

	"github.com/hookbridge/hookbridge/internal/sbemu"
	"github.com/hookbridge/hookbridge/internal/sbemu/sbemutest"
)

// TestReleasedIsNotADelivery speaks plain AMQP 1.0 (go-amqp, no Service
// Bus SDK): a message released by its receiver comes back without its
// delivery count raised, while a modified (abandoned) one counts.
func TestReleasedIsNotADelivery(t *testing.T) {
	s := sbemutest.NewServer(t, sbemu.QueueConfig{Name: "q"})
	conn, err := amqp.Dial(ctx(t), "amqp://"+s.Addr(), &amqp.ConnOptions{SASLType: amqp.SASLTypeAnonymous()})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	sess, err := conn.NewSession(ctx(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	snd, err := sess.NewSender(ctx(t), "q", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := snd.Send(ctx(t), amqp.NewMessage([]byte("x")), nil); err != nil {
		t.Fatalf("send: %v", err)
	}
	mode := amqp.ReceiverSettleModeSecond
	rcv, err := sess.NewReceiver(ctx(t), "q", &amqp.ReceiverOptions{SettlementMode: &mode, Credit: 1})
	if err != nil {
		t.Fatal(err)
	}
	m, err := rcv.Receive(ctx(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := rcv.ReleaseMessage(ctx(t), m); err != nil {
		t.Fatalf("release: %v", err)
	}
	m, err = rcv.Receive(ctx(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	if m.Header.DeliveryCount != 0 {
		t.Errorf("after release: delivery count %d, want 0", m.Header.DeliveryCount)
	}
	if err := rcv.ModifyMessage(ctx(t), m, nil); err != nil {
		t.Fatalf("modify: %v", err)
	}
	m, err = rcv.Receive(ctx(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	if m.Header.DeliveryCount != 1 {
		t.Errorf("after modify: delivery count %d, want 1", m.Header.DeliveryCount)
	}
	if seq, _ := m.Annotations["x-opt-sequence-number"].(int64); seq != 1 {
		t.Errorf("sequence number annotation %v", m.Annotations["x-opt-sequence-number"])
	}
	if err := rcv.AcceptMessage(ctx(t), m); err != nil {
		t.Fatal(err)
	}
	if st, _ := s.Stats("q"); st != (sbemu.QueueStats{}) {
		t.Errorf("stats %+v", st)
	}
}

// TestSASLPlainChecksTheKey: with a shared access key set, SASL PLAIN
// opens a connection only with the key's name and the key itself.
func TestSASLPlainChecksTheKey(t *testing.T) {
	t.Parallel()
	s := sbemutest.NewServerConfig(t, sbemu.Config{SharedAccessKeyName: "owner", SharedAccessKey: "s3cret-key",
		Queues: []sbemu.QueueConfig{{Name: "q"}}})
	for _, tt := range []struct {
		name, user, pass string
		ok               bool
	}{
		{"the key", "owner", "s3cret-key", true},
		{"a wrong key", "owner", "s3cret-kez", false},
		{"another key name", "reader", "s3cret-key", false},
		{"no key", "owner", "", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			conn, err := amqp.Dial(ctx(t), "amqp://"+s.Addr(), &amqp.ConnOptions{SASLType: amqp.SASLTypePlain(tt.user, tt.pass)})
			if err == nil {
				conn.Close()
			}
			if ok := err == nil; ok != tt.ok {
				t.Fatalf("dial with user %q: %v, want success %v", tt.user, err, tt.ok)
			}
		})
	}
}
