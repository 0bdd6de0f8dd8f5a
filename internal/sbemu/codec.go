package sbemu

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"
	"unicode/utf8"
)

// The AMQP 1.0 type system, as much of it as Service Bus clients use. Values
// decode to:
//
//	null → nil; boolean → bool; ubyte/ushort/uint/ulong → uint8/16/32/64;
//	byte/short/int/long → int8/16/32/64; float/double → float32/64;
//	char → rune (int32 is int; char decodes to charValue); timestamp →
//	time.Time; uuid → UUID; binary → []byte; string → string; symbol →
//	Symbol; list → []any; map → *Map; array → Array; described → Described.
//
// Decimals decode to their raw bytes (Decimal), which nothing here reads.

// Symbol is an AMQP symbol (an ASCII name).
type Symbol string

// UUID is an AMQP uuid, in RFC 4122 byte order.
type UUID [16]byte

func (u UUID) String() string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

// Described is a described value: a descriptor (ulong or symbol) and a
// value.
type Described struct {
	Descriptor any
	Value      any
}

// Array is an AMQP array: elements of one type.
type Array []any

// Decimal holds an undecoded decimal32/64/128.
type Decimal []byte

// charValue is an AMQP char.
type charValue rune

// Map is an AMQP map, in wire order.
type Map struct {
	Keys   []any
	Values []any
}

// Get returns the value under key (compared with ==), or nil.
func (m *Map) Get(key any) any {
	if m == nil {
		return nil
	}
	for i, k := range m.Keys {
		if k == key {
			return m.Values[i]
		}
	}
	return nil
}

// GetName returns the value under a string or symbol key.
func (m *Map) GetName(name string) any {
	v, _ := m.Lookup(name)
	return v
}

// Lookup returns the value under a string or symbol key, and whether the
// key is there at all (its value may be null).
func (m *Map) Lookup(name string) (any, bool) {
	if m == nil {
		return nil, false
	}
	for i, k := range m.Keys {
		if k == Symbol(name) || k == name {
			return m.Values[i], true
		}
	}
	return nil, false
}

// Set adds or replaces key.
func (m *Map) Set(key, value any) {
	for i, k := range m.Keys {
		if k == key {
			m.Values[i] = value
			return
		}
	}
	m.Keys = append(m.Keys, key)
	m.Values = append(m.Values, value)
}

// errShort is returned when the input ends inside a value.
var errShort = errors.New("amqp: truncated value")

// decoder reads AMQP values from a byte slice.
type decoder struct {
	b   []byte
	off int
}

func (d *decoder) need(n int) ([]byte, error) {
	if n < 0 || d.off+n > len(d.b) {
		return nil, errShort
	}
	p := d.b[d.off : d.off+n]
	d.off += n
	return p, nil
}

func (d *decoder) byte() (byte, error) {
	p, err := d.need(1)
	if err != nil {
		return 0, err
	}
	return p[0], nil
}

// value decodes one value.
func (d *decoder) value() (any, error) {
	c, err := d.byte()
	if err != nil {
		return nil, err
	}
	if c == 0x00 {
		desc, err := d.value()
		if err != nil {
			return nil, err
		}
		v, err := d.value()
		if err != nil {
			return nil, err
		}
		return Described{Descriptor: desc, Value: v}, nil
	}
	return d.typed(c)
}

// typed decodes a value whose constructor c was already read.
func (d *decoder) typed(c byte) (any, error) {
	fixed := func(n int) ([]byte, error) { return d.need(n) }
	switch c {
	case 0x40:
		return nil, nil
	case 0x41:
		return true, nil
	case 0x42:
		return false, nil
	case 0x56:
		b, err := d.byte()
		return b != 0, err
	case 0x50:
		b, err := d.byte()
		return uint8(b), err
	case 0x60:
		p, err := fixed(2)
		if err != nil {
			return nil, err
		}
		return binary.BigEndian.Uint16(p), nil
	case 0x70:
		p, err := fixed(4)
		if err != nil {
			return nil, err
		}
		return binary.BigEndian.Uint32(p), nil
	case 0x52:
		b, err := d.byte()
		return uint32(b), err
	case 0x43:
		return uint32(0), nil
	case 0x80:
		p, err := fixed(8)
		if err != nil {
			return nil, err
		}
		return binary.BigEndian.Uint64(p), nil
	case 0x53:
		b, err := d.byte()
		return uint64(b), err
	case 0x44:
		return uint64(0), nil
	case 0x51:
		b, err := d.byte()
		return int8(b), err
	case 0x61:
		p, err := fixed(2)
		if err != nil {
			return nil, err
		}
		return int16(binary.BigEndian.Uint16(p)), nil
	case 0x71:
		p, err := fixed(4)
		if err != nil {
			return nil, err
		}
		return int32(binary.BigEndian.Uint32(p)), nil
	case 0x54:
		b, err := d.byte()
		return int32(int8(b)), err
	case 0x81:
		p, err := fixed(8)
		if err != nil {
			return nil, err
		}
		return int64(binary.BigEndian.Uint64(p)), nil
	case 0x55:
		b, err := d.byte()
		return int64(int8(b)), err
	case 0x72:
		p, err := fixed(4)
		if err != nil {
			return nil, err
		}
		return math.Float32frombits(binary.BigEndian.Uint32(p)), nil
	case 0x82:
		p, err := fixed(8)
		if err != nil {
			return nil, err
		}
		return math.Float64frombits(binary.BigEndian.Uint64(p)), nil
	case 0x74, 0x84, 0x94:
		n := map[byte]int{0x74: 4, 0x84: 8, 0x94: 16}[c]
		p, err := fixed(n)
		return Decimal(p), err
	case 0x73:
		p, err := fixed(4)
		if err != nil {
			return nil, err
		}
		return charValue(binary.BigEndian.Uint32(p)), nil
	case 0x83:
		p, err := fixed(8)
		if err != nil {
			return nil, err
		}
		return time.UnixMilli(int64(binary.BigEndian.Uint64(p))).UTC(), nil
	case 0x98:
		p, err := fixed(16)
		if err != nil {
			return nil, err
		}
		var u UUID
		copy(u[:], p)
		return u, nil
	case 0xa0, 0xa1, 0xa3, 0xb0, 0xb1, 0xb3:
		var n int
		if c&0xf0 == 0xa0 {
			b, err := d.byte()
			if err != nil {
				return nil, err
			}
			n = int(b)
		} else {
			p, err := fixed(4)
			if err != nil {
				return nil, err
			}
			n = int(binary.BigEndian.Uint32(p))
		}
		p, err := d.need(n)
		if err != nil {
			return nil, err
		}
		switch c & 0x0f {
		case 0x0:
			return append([]byte(nil), p...), nil
		case 0x1:
			if !utf8.Valid(p) {
				return nil, errors.New("amqp: string is not UTF-8")
			}
			return string(p), nil
		default:
			return Symbol(p), nil
		}
	case 0x45:
		return []any{}, nil
	case 0xc0, 0xd0, 0xc1, 0xd1, 0xe0, 0xf0:
		var size, count int
		if c&0xf0 == 0xc0 || c&0xf0 == 0xe0 {
			p, err := fixed(2)
			if err != nil {
				return nil, err
			}
			size, count = int(p[0]), int(p[1])
		} else {
			p, err := fixed(8)
			if err != nil {
				return nil, err
			}
			size, count = int(binary.BigEndian.Uint32(p[:4])), int(binary.BigEndian.Uint32(p[4:]))
		}
		// size counts the count field and the items.
		countLen := 1
		if c&0xf0 == 0xd0 || c&0xf0 == 0xf0 {
			countLen = 4
		}
		if size < countLen || d.off+size-countLen > len(d.b) {
			return nil, errShort
		}
		if count > size { // every item takes at least one byte
			return nil, fmt.Errorf("amqp: compound of %d bytes claims %d items", size, count)
		}
		switch c {
		case 0xc0, 0xd0:
			list := make([]any, count)
			for i := range list {
				v, err := d.value()
				if err != nil {
					return nil, err
				}
				list[i] = v
			}
			return list, nil
		case 0xc1, 0xd1:
			if count%2 != 0 {
				return nil, errors.New("amqp: map with an odd number of items")
			}
			m := &Map{}
			for i := 0; i < count; i += 2 {
				k, err := d.value()
				if err != nil {
					return nil, err
				}
				v, err := d.value()
				if err != nil {
					return nil, err
				}
				m.Keys = append(m.Keys, k)
				m.Values = append(m.Values, v)
			}
			return m, nil
		default: // array: one constructor for every element
			ec, err := d.byte()
			if err != nil {
				return nil, err
			}
			var desc any
			if ec == 0x00 {
				if desc, err = d.value(); err != nil {
					return nil, err
				}
				if ec, err = d.byte(); err != nil {
					return nil, err
				}
			}
			arr := make(Array, count)
			for i := range arr {
				v, err := d.typed(ec)
				if err != nil {
					return nil, err
				}
				if desc != nil {
					v = Described{Descriptor: desc, Value: v}
				}
				arr[i] = v
			}
			return arr, nil
		}
	default:
		return nil, fmt.Errorf("amqp: unknown type constructor 0x%02x", c)
	}
}

// decodeValue decodes one value from b.
func decodeValue(b []byte) (any, int, error) {
	d := &decoder{b: b}
	v, err := d.value()
	return v, d.off, err
}

// encoder appends AMQP values to a buffer.
type encoder struct{ b []byte }

func (e *encoder) u8(b byte) { e.b = append(e.b, b) }

// value encodes v. It panics on a Go type with no AMQP encoding: values
// here are built by this package.
func (e *encoder) value(v any) {
	switch v := v.(type) {
	case nil:
		e.u8(0x40)
	case bool:
		if v {
			e.u8(0x41)
		} else {
			e.u8(0x42)
		}
	case uint8:
		e.b = append(e.b, 0x50, v)
	case uint16:
		e.u8(0x60)
		e.b = binary.BigEndian.AppendUint16(e.b, v)
	case uint32:
		switch {
		case v == 0:
			e.u8(0x43)
		case v < 256:
			e.b = append(e.b, 0x52, byte(v))
		default:
			e.u8(0x70)
			e.b = binary.BigEndian.AppendUint32(e.b, v)
		}
	case uint64:
		switch {
		case v == 0:
			e.u8(0x44)
		case v < 256:
			e.b = append(e.b, 0x53, byte(v))
		default:
			e.u8(0x80)
			e.b = binary.BigEndian.AppendUint64(e.b, v)
		}
	case int8:
		e.b = append(e.b, 0x51, byte(v))
	case int16:
		e.u8(0x61)
		e.b = binary.BigEndian.AppendUint16(e.b, uint16(v))
	case int32:
		if v >= -128 && v <= 127 {
			e.b = append(e.b, 0x54, byte(int8(v)))
		} else {
			e.u8(0x71)
			e.b = binary.BigEndian.AppendUint32(e.b, uint32(v))
		}
	case int64:
		if v >= -128 && v <= 127 {
			e.b = append(e.b, 0x55, byte(int8(v)))
		} else {
			e.u8(0x81)
			e.b = binary.BigEndian.AppendUint64(e.b, uint64(v))
		}
	case int:
		e.value(int64(v))
	case float32:
		e.u8(0x72)
		e.b = binary.BigEndian.AppendUint32(e.b, math.Float32bits(v))
	case float64:
		e.u8(0x82)
		e.b = binary.BigEndian.AppendUint64(e.b, math.Float64bits(v))
	case charValue:
		e.u8(0x73)
		e.b = binary.BigEndian.AppendUint32(e.b, uint32(v))
	case time.Time:
		e.u8(0x83)
		e.b = binary.BigEndian.AppendUint64(e.b, uint64(v.UnixMilli()))
	case UUID:
		e.u8(0x98)
		e.b = append(e.b, v[:]...)
	case []byte:
		e.variable(0xa0, 0xb0, v)
	case string:
		e.variable(0xa1, 0xb1, []byte(v))
	case Symbol:
		e.variable(0xa3, 0xb3, []byte(v))
	case []any:
		e.list(v)
	case *Map:
		e.compound(0xd1, len(v.Keys)*2, func() {
			for i := range v.Keys {
				e.value(v.Keys[i])
				e.value(v.Values[i])
			}
		})
	case Array:
		e.array(v)
	case Described:
		e.u8(0x00)
		e.value(v.Descriptor)
		e.value(v.Value)
	case Decimal:
		switch len(v) {
		case 4:
			e.u8(0x74)
		case 8:
			e.u8(0x84)
		default:
			e.u8(0x94)
		}
		e.b = append(e.b, v...)
	default:
		panic(fmt.Sprintf("sbemu: no AMQP encoding for %T", v))
	}
}

func (e *encoder) variable(small, large byte, p []byte) {
	if len(p) < 256 {
		e.b = append(e.b, small, byte(len(p)))
	} else {
		e.u8(large)
		e.b = binary.BigEndian.AppendUint32(e.b, uint32(len(p)))
	}
	e.b = append(e.b, p...)
}

func (e *encoder) list(items []any) {
	if len(items) == 0 {
		e.u8(0x45)
		return
	}
	e.compound(0xd0, len(items), func() {
		for _, it := range items {
			e.value(it)
		}
	})
}

// compound writes a 32-bit list/map/array header, the items, and patches
// the size.
func (e *encoder) compound(code byte, count int, items func()) {
	e.u8(code)
	at := len(e.b)
	e.b = append(e.b, 0, 0, 0, 0)
	e.b = binary.BigEndian.AppendUint32(e.b, uint32(count))
	items()
	binary.BigEndian.PutUint32(e.b[at:], uint32(len(e.b)-at-4))
}

// array writes an array32 whose element constructor is that of the first
// element, re-encoding each element in its wide form so all share it.
func (e *encoder) array(a Array) {
	e.compound(0xf0, len(a), func() {
		if len(a) == 0 {
			e.u8(0x40)
			return
		}
		var ctor byte
		switch a[0].(type) {
		case Symbol:
			ctor = 0xb3
		case string:
			ctor = 0xb1
		case []byte:
			ctor = 0xb0
		case UUID:
			ctor = 0x98
		case int64:
			ctor = 0x81
		case uint64:
			ctor = 0x80
		case uint32:
			ctor = 0x70
		case int32:
			ctor = 0x71
		case time.Time:
			ctor = 0x83
		case bool:
			ctor = 0x56
		default:
			panic(fmt.Sprintf("sbemu: no AMQP array encoding for %T", a[0]))
		}
		e.u8(ctor)
		for _, v := range a {
			switch v := v.(type) {
			case Symbol:
				e.b = binary.BigEndian.AppendUint32(e.b, uint32(len(v)))
				e.b = append(e.b, v...)
			case string:
				e.b = binary.BigEndian.AppendUint32(e.b, uint32(len(v)))
				e.b = append(e.b, v...)
			case []byte:
				e.b = binary.BigEndian.AppendUint32(e.b, uint32(len(v)))
				e.b = append(e.b, v...)
			case UUID:
				e.b = append(e.b, v[:]...)
			case int64:
				e.b = binary.BigEndian.AppendUint64(e.b, uint64(v))
			case uint64:
				e.b = binary.BigEndian.AppendUint64(e.b, v)
			case uint32:
				e.b = binary.BigEndian.AppendUint32(e.b, v)
			case int32:
				e.b = binary.BigEndian.AppendUint32(e.b, uint32(v))
			case time.Time:
				e.b = binary.BigEndian.AppendUint64(e.b, uint64(v.UnixMilli()))
			case bool:
				if v {
					e.u8(1)
				} else {
					e.u8(0)
				}
			}
		}
	})
}

// encodeValue returns the encoding of v.
func encodeValue(v any) []byte {
	e := &encoder{}
	e.value(v)
	return e.b
}

// asInt64 reads any AMQP integer (as this codec or go-amqp decodes it):
// clients choose different widths and signedness for the same field.
func asInt64(v any) (int64, bool) {
	switch n := v.(type) {
	case int8:
		return int64(n), true
	case int16:
		return int64(n), true
	case int32:
		return int64(n), true
	case int64:
		return n, true
	case int:
		return int64(n), true
	case uint8:
		return int64(n), true
	case uint16:
		return int64(n), true
	case uint32:
		return int64(n), true
	case uint64:
		if n > math.MaxInt64 {
			return 0, false
		}
		return int64(n), true
	}
	return 0, false
}
