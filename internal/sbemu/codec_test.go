package sbemu

import (
	"bytes"
	"reflect"
	"testing"
	"time"
)

func TestCodecRoundTrip(t *testing.T) {
	m := &Map{}
	m.Set(Symbol("k"), "v")
	m.Set("n", int64(-5))
	values := []any{
		nil, true, false, uint8(7), uint16(300), uint32(0), uint32(200), uint32(70000), uint64(0), uint64(9), uint64(1 << 40),
		int8(-3), int16(-300), int32(-100), int32(1 << 20), int64(-1), int64(1 << 40), float32(1.5), float64(-2.25),
		charValue('é'), time.UnixMilli(1700000000123).UTC(), UUID{1, 2, 3}, []byte("bin"), "str", Symbol("sym"),
		[]any{}, []any{"a", uint32(1), []any{true}}, m,
		Array{Symbol("a"), Symbol("bb")}, Array{int64(1), int64(-2)}, Array{UUID{9}},
		Described{Descriptor: uint64(0x24), Value: []any{}},
		Described{Descriptor: Symbol("amqp:accepted:list"), Value: []any{}},
		string(bytes.Repeat([]byte("x"), 300)), bytes.Repeat([]byte("y"), 300),
	}
	for _, v := range values {
		enc := encodeValue(v)
		got, n, err := decodeValue(enc)
		if err != nil || n != len(enc) {
			t.Errorf("%T %v: decode: %v (%d of %d bytes)", v, v, err, n, len(enc))
			continue
		}
		if !reflect.DeepEqual(got, v) {
			t.Errorf("round trip of %T: got %#v, want %#v", v, got, v)
		}
	}
}

func TestFrameRoundTrip(t *testing.T) {
	b := encodeFrame(frameAMQP, 3, described(codeTransfer, uint32(1), uint32(2), []byte{1}, uint32(0), false, true), []byte("payload"))
	f, err := readFrame(bytes.NewReader(b), maxFrameSize)
	if err != nil {
		t.Fatal(err)
	}
	if f.channel != 3 || f.body.code != codeTransfer || !f.body.boolean(5) || string(f.payload) != "payload" {
		t.Errorf("frame %+v", f)
	}
	if h, err := readFrame(bytes.NewReader(heartbeat), maxFrameSize); err != nil || !h.empty {
		t.Errorf("heartbeat: %+v %v", h, err)
	}
	big := encodeFrame(frameAMQP, 0, described(codeTransfer), make([]byte, maxFrameSize))
	if _, err := readFrame(bytes.NewReader(big), maxFrameSize); err == nil {
		t.Error("oversized frame accepted")
	}
}

// FuzzDecode feeds arbitrary bytes to the value and frame decoders, which
// read what clients send: they must fail cleanly, never panic or allocate
// wildly.
func FuzzDecode(f *testing.F) {
	f.Add(encodeValue([]any{"a", uint32(1), &Map{Keys: []any{Symbol("k")}, Values: []any{int64(2)}}}))
	f.Add(encodeValue(Array{Symbol("x")}))
	f.Add(encodeFrame(frameAMQP, 0, described(codeOpen, "c", nil, uint32(65536)), nil))
	f.Add([]byte{0xd0, 0xff, 0xff, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff})
	f.Add([]byte{0xf0, 0, 0, 0, 8, 0, 0, 0, 5, 0xa1})
	f.Fuzz(func(t *testing.T, b []byte) {
		decodeValue(b)
		readFrame(bytes.NewReader(b), maxFrameSize)
	})
}
