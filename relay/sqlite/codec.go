package sqlite

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"sort"
)

// A message's immutable parts (subject, content type, application
// properties and body) are stored as one blob, so a send binds four values
// per message instead of eight and a receive decodes without reflection:
//
//	version 1
//	uvarint len, subject
//	uvarint len, content type
//	uvarint count, then per property: uvarint len, name, type, value
//	body (the rest)
//
// Property types: 's' string (uvarint len, bytes), 't'/'f' bool, 'i' int64
// (varint), 'd' float64 (8 bytes, little endian).
const codecVersion = 1

var errCorrupt = errors.New("stored message is corrupt")

// appendData appends the encoded parts to dst.
func appendData(dst []byte, subject, contentType string, props map[string]any, body []byte) ([]byte, error) {
	dst = append(dst, codecVersion)
	dst = appendString(dst, subject)
	dst = appendString(dst, contentType)
	dst = binary.AppendUvarint(dst, uint64(len(props)))
	if len(props) > 0 {
		// Sorted, so that equal messages encode equally.
		names := make([]string, 0, len(props))
		for k := range props {
			names = append(names, k)
		}
		sort.Strings(names)
		for _, k := range names {
			dst = appendString(dst, k)
			switch v := props[k].(type) {
			case string:
				dst = append(dst, 's')
				dst = appendString(dst, v)
			case bool:
				if v {
					dst = append(dst, 't')
				} else {
					dst = append(dst, 'f')
				}
			case int:
				dst = append(dst, 'i')
				dst = binary.AppendVarint(dst, int64(v))
			case int32:
				dst = append(dst, 'i')
				dst = binary.AppendVarint(dst, int64(v))
			case int64:
				dst = append(dst, 'i')
				dst = binary.AppendVarint(dst, v)
			case uint32:
				dst = append(dst, 'i')
				dst = binary.AppendVarint(dst, int64(v))
			case float64:
				dst = append(dst, 'd')
				dst = binary.LittleEndian.AppendUint64(dst, math.Float64bits(v))
			default:
				return nil, fmt.Errorf("application property %q has unsupported type %T; use string, bool, int64 or float64", k, v)
			}
		}
	}
	return append(dst, body...), nil
}

// dataSize is at least the length appendData gives the parts: every
// length and every non-string value is counted at a varint's longest, so
// that one allocation holds a batch's messages.
func dataSize(subject, contentType string, props map[string]any, body []byte) int {
	n := 1 + 3*binary.MaxVarintLen64 + len(subject) + len(contentType) + len(body)
	for k, v := range props {
		n += binary.MaxVarintLen64 + len(k) + 1 + binary.MaxVarintLen64
		if s, ok := v.(string); ok {
			n += len(s)
		}
	}
	return n
}

func appendString(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

// decodeData splits an encoded blob. The body aliases b.
func decodeData(b []byte) (subject, contentType string, props map[string]any, body []byte, err error) {
	d := decoder{b: b}
	if v := d.byte(); v != codecVersion {
		return "", "", nil, nil, fmt.Errorf("%w: unknown encoding version %d", errCorrupt, v)
	}
	subject = d.string()
	contentType = d.string()
	n := d.uvarint()
	if n > uint64(len(d.b)) {
		d.err = errCorrupt
	}
	if n > 0 && d.err == nil {
		props = make(map[string]any, n)
		for range n {
			k := d.string()
			switch d.byte() {
			case 's':
				props[k] = d.string()
			case 't':
				props[k] = true
			case 'f':
				props[k] = false
			case 'i':
				props[k] = d.varint()
			case 'd':
				props[k] = math.Float64frombits(binary.LittleEndian.Uint64(d.next(8)))
			default:
				d.err = errCorrupt
			}
			if d.err != nil {
				break
			}
		}
	}
	if d.err != nil {
		return "", "", nil, nil, fmt.Errorf("decode stored message: %w", d.err)
	}
	return subject, contentType, props, d.b, nil
}

type decoder struct {
	b   []byte
	err error
}

func (d *decoder) next(n int) []byte {
	if d.err != nil || n < 0 || n > len(d.b) {
		d.err = errCorrupt
		return make([]byte, max(n, 8))
	}
	p := d.b[:n]
	d.b = d.b[n:]
	return p
}

func (d *decoder) byte() byte { return d.next(1)[0] }

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = errCorrupt
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.err = errCorrupt
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) string() string {
	n := d.uvarint()
	if n > uint64(len(d.b)) {
		d.err = errCorrupt
		return ""
	}
	return string(d.next(int(n)))
}
