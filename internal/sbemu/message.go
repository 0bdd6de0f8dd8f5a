package sbemu

import (
	"crypto/rand"
	"fmt"
	"time"

	"github.com/Azure/go-amqp"
)

// This file renders stored messages as clients receive them, and makes lock
// tokens.

func newLockToken() UUID {
	var u UUID
	rand.Read(u[:])
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return u
}

// dotnetOrder converts an RFC 4122 UUID to .NET's GUID byte order (the first
// three groups little-endian), the order of a lock token in a delivery tag.
func dotnetOrder(u UUID) []byte {
	b := make([]byte, 16)
	copy(b, u[:])
	b[0], b[1], b[2], b[3] = u[3], u[2], u[1], u[0]
	b[4], b[5] = u[5], u[4]
	b[6], b[7] = u[7], u[6]
	return b
}

func messageID(msg *amqp.Message) string {
	if msg.Properties == nil || msg.Properties.MessageID == nil {
		return ""
	}
	return fmt.Sprint(msg.Properties.MessageID)
}

// deliverable renders m as a client receives it: the broker's annotations
// (sequence number, enqueued time, state, lock expiry), the header with the
// delivery count, and for a locked delivery the lock token in the delivery
// annotations.
func deliverable(m *stored, withLock bool, now time.Time) ([]byte, error) {
	msg := *m.msg
	msg.DeliveryTag = nil
	ann := make(amqp.Annotations, len(m.msg.Annotations)+7)
	for k, v := range m.msg.Annotations {
		ann[k] = v
	}
	ann["x-opt-sequence-number"] = m.seq
	ann["x-opt-enqueue-sequence-number"] = m.seq
	ann["x-opt-enqueued-time"] = m.enqueued
	if m.sessionID != "" {
		ann["x-opt-partition-key"] = m.sessionID
	}
	if withLock {
		ann["x-opt-locked-until"] = m.lockedUntil
	}
	if m.dlSource != "" {
		ann["x-opt-deadletter-source"] = m.dlSource
	}
	switch {
	case m.deferred:
		ann["x-opt-message-state"] = int32(1)
	case now.Before(m.visible):
		ann["x-opt-message-state"] = int32(2)
	}
	msg.Annotations = ann
	if withLock {
		msg.DeliveryAnnotations = amqp.Annotations{"x-opt-lock-token": amqp.UUID(m.lockToken)}
	} else {
		msg.DeliveryAnnotations = nil
	}
	if msg.Properties == nil {
		msg.Properties = &amqp.MessageProperties{}
	}
	hdr := amqp.MessageHeader{Priority: 4}
	if m.msg.Header != nil {
		hdr = *m.msg.Header
	}
	msg.Header = nil
	rest, err := msg.MarshalBinary()
	if err != nil {
		return nil, err
	}
	// The header is written by hand with every field, the delivery count
	// included when it is 0: go-amqp leaves default fields out, and the
	// JavaScript SDK then reports no delivery count at all where a namespace
	// gives it 0.
	var ttl any
	if hdr.TTL > 0 {
		ttl = uint32(hdr.TTL.Milliseconds())
	}
	head := encodeValue(described(codeHeader, hdr.Durable, hdr.Priority, ttl, hdr.FirstAcquirer, m.prior))
	return append(head, rest...), nil
}
