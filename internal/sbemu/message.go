package sbemu

import (
	"crypto/rand"
	"fmt"

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

// deliverable renders m as the client receives it: the broker's
// annotations, the header's delivery count, and for peek-lock the lock
// token in the delivery annotations.
func deliverable(q *queue, m *stored, withLock bool, state int64) ([]byte, error) {
	msg := *m.msg
	msg.DeliveryTag = nil
	hdr := amqp.MessageHeader{}
	if m.msg.Header != nil {
		hdr = *m.msg.Header
	}
	hdr.DeliveryCount = m.prior
	msg.Header = &hdr
	ann := make(amqp.Annotations, len(m.msg.Annotations)+6)
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
	if state != 0 {
		ann["x-opt-message-state"] = state
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
	return msg.MarshalBinary()
}
