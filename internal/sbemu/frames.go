package sbemu

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"time"
)

// Performative and composite descriptor codes (AMQP 1.0, part 2 and 3).
const (
	codeOpen        = 0x10
	codeBegin       = 0x11
	codeAttach      = 0x12
	codeFlow        = 0x13
	codeTransfer    = 0x14
	codeDisposition = 0x15
	codeDetach      = 0x16
	codeEnd         = 0x17
	codeClose       = 0x18

	codeError    = 0x1d
	codeReceived = 0x23
	codeAccepted = 0x24
	codeRejected = 0x25
	codeReleased = 0x26
	codeModified = 0x27
	codeSource   = 0x28
	codeTarget   = 0x29
	codeHeader   = 0x70 // the message header section

	codeSASLMechanisms = 0x40
	codeSASLInit       = 0x41
	codeSASLOutcome    = 0x44

	frameAMQP = 0
	frameSASL = 1
)

// batchFormat is the message format of a Service Bus batch transfer.
const batchFormat = 0x80013700

// maxFrameSize is the largest frame either side sends.
const maxFrameSize = 65536

// perf is a decoded performative (or other described list): its code and
// fields in order.
type perf struct {
	code   uint64
	fields []any
}

func (p perf) field(i int) any {
	if i < len(p.fields) {
		return p.fields[i]
	}
	return nil
}

// u32 reads an unsigned field (uint, or any integer type that fits).
func (p perf) u32(i int) (uint32, bool) {
	n, ok := asInt64(p.field(i))
	if !ok || n < 0 || n > math.MaxUint32 {
		return 0, false
	}
	return uint32(n), true
}

func (p perf) boolean(i int) bool {
	b, _ := p.field(i).(bool)
	return b
}

func (p perf) str(i int) string {
	switch v := p.field(i).(type) {
	case string:
		return v
	case Symbol:
		return string(v)
	}
	return ""
}

func (p perf) bytes(i int) []byte {
	b, _ := p.field(i).([]byte)
	return b
}

func (p perf) ubyte(i int) (uint8, bool) {
	v, ok := p.field(i).(uint8)
	return v, ok
}

func (p perf) described(i int) (perf, bool) {
	return asPerf(p.field(i))
}

func (p perf) mapField(i int) *Map {
	m, _ := p.field(i).(*Map)
	return m
}

// asPerf reads a described list.
func asPerf(v any) (perf, bool) {
	d, ok := v.(Described)
	if !ok {
		return perf{}, false
	}
	var code uint64
	switch c := d.Descriptor.(type) {
	case uint64:
		code = c
	case Symbol: // symbolic descriptors: only the error and states we need
		switch c {
		case "amqp:error:list":
			code = codeError
		case "amqp:accepted:list":
			code = codeAccepted
		case "amqp:rejected:list":
			code = codeRejected
		case "amqp:released:list":
			code = codeReleased
		case "amqp:modified:list":
			code = codeModified
		default:
			return perf{}, false
		}
	default:
		return perf{}, false
	}
	fields, _ := d.Value.([]any)
	return perf{code: code, fields: fields}, true
}

// described builds a described list, trimming trailing nulls.
func described(code uint64, fields ...any) Described {
	for len(fields) > 0 && fields[len(fields)-1] == nil {
		fields = fields[:len(fields)-1]
	}
	return Described{Descriptor: code, Value: fields}
}

// amqpError builds an error composite.
func amqpError(condition, description string) Described {
	return described(codeError, Symbol(condition), description)
}

// frame is one AMQP or SASL frame.
type frame struct {
	kind    byte
	channel uint16
	body    perf
	payload []byte // transfer payload
	empty   bool   // a heartbeat
}

// readFrame reads one frame. maxSize bounds what is accepted.
func readFrame(r io.Reader, maxSize uint32) (frame, error) {
	var hdr [8]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return frame{}, err
	}
	size := binary.BigEndian.Uint32(hdr[:4])
	doff := hdr[4]
	if size < 8 || size > maxSize || doff < 2 || uint32(doff)*4 > size {
		return frame{}, fmt.Errorf("amqp: bad frame header (size %d, doff %d)", size, doff)
	}
	rest := make([]byte, size-8)
	if _, err := io.ReadFull(r, rest); err != nil {
		return frame{}, err
	}
	f := frame{kind: hdr[5], channel: binary.BigEndian.Uint16(hdr[6:8])}
	rest = rest[int(doff)*4-8:]
	if len(rest) == 0 {
		f.empty = true
		return f, nil
	}
	d := &decoder{b: rest}
	v, err := d.value()
	if err != nil {
		return frame{}, fmt.Errorf("amqp: decode performative: %w", err)
	}
	p, ok := asPerf(v)
	if !ok {
		return frame{}, errors.New("amqp: frame body is not a performative")
	}
	f.body = p
	f.payload = rest[d.off:]
	return f, nil
}

// encodeFrame returns the bytes of a frame carrying body and payload.
func encodeFrame(kind byte, channel uint16, body Described, payload []byte) []byte {
	e := &encoder{b: make([]byte, 8, 64+len(payload))}
	e.value(body)
	e.b = append(e.b, payload...)
	binary.BigEndian.PutUint32(e.b[0:4], uint32(len(e.b)))
	e.b[4] = 2
	e.b[5] = kind
	binary.BigEndian.PutUint16(e.b[6:8], channel)
	return e.b
}

// heartbeat is an empty AMQP frame.
var heartbeat = []byte{0, 0, 0, 8, 2, 0, 0, 0}

// dotnetTicks converts t to .NET ticks (100ns since 0001-01-01), as Service
// Bus writes lock expiries in link properties.
func dotnetTicks(t time.Time) int64 {
	return t.UnixMilli()*10000 + 621355968000000000
}
