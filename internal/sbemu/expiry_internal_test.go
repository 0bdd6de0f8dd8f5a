package sbemu

import (
	"testing"
	"time"

	"github.com/Azure/go-amqp"
)

// A session whose lock ran out is given to its next holder the moment it
// asks, even before the expiry tick has come round; the message received
// under the lost lock still counts that delivery, as Service Bus counts a
// delivery whose session lock expired.
func TestExpiredSessionLockCountsBeforeTheTick(t *testing.T) {
	s := &Server{queues: map[string]*queue{}, clock: time.Now}
	q := newQueue(QueueConfig{Name: "sq", RequiresSession: true, LockDuration: time.Second})
	now := time.Now()
	first, second := &link{}, &link{}
	s.lockSession(q, "call-1", first, now)
	m := &stored{seq: 1, sessionID: "call-1", msg: &amqp.Message{}}
	q.messages = append(q.messages, m)
	s.lockMessage(q, m, first, now)

	later := now.Add(2 * time.Second) // past the lock, no tick in between
	st := s.lockSession(q, "call-1", second, later)
	if st.holder != second {
		t.Fatalf("session held by %p, want the second holder %p", st.holder, second)
	}
	if m.prior != 1 || m.lockToken != (UUID{}) {
		t.Errorf("message after the expired session lock: %d earlier deliveries, lock %v; want 1 and no lock", m.prior, m.lockToken)
	}
	expired := 0
	for _, e := range s.events.events {
		if e.Kind == EventSessionLockExpired {
			expired++
		}
	}
	if expired != 1 {
		t.Errorf("%d session-lock-expired events, want 1", expired)
	}
}
