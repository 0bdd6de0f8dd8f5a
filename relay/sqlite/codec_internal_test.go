package sqlite

import (
	"bytes"
	"maps"
	"strings"
	"testing"
)

// The stored parts round-trip, and dataSize covers what appendData writes,
// so that a send encodes a whole batch into one allocation even when its
// properties are long (an Event Grid event's source and subject are
// resource paths of over a hundred bytes).
func TestDataRoundTripAndSize(t *testing.T) {
	long := "/subscriptions/" + strings.Repeat("0", 36) + "/resourceGroups/rg/providers/Microsoft.Communication/communicationServices/acs"
	for _, tc := range []struct {
		name    string
		subject string
		props   map[string]any
		body    []byte
	}{
		{"empty", "", nil, nil},
		{"short", "Microsoft.Communication.CallConnected", map[string]any{"cloudEvents_id": "evt-1"}, []byte(`{"a":1}`)},
		{"long properties", "/caller/4:+15555550100/recipient/8:acs:" + strings.Repeat("f", 80),
			map[string]any{"cloudEvents_source": long, "cloudEvents_subject": long + "/calls/" + strings.Repeat("c", 64),
				"cloudEvents_type": "Microsoft.Communication.IncomingCall", "hookbridge_replay_count": int64(1 << 40),
				"flag": true, "off": false, "ratio": 0.25, "small": 3},
			bytes.Repeat([]byte("x"), 3000)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data, err := appendData(nil, tc.subject, "application/cloudevents+json; charset=utf-8", tc.props, tc.body)
			if err != nil {
				t.Fatal(err)
			}
			if size := dataSize(tc.subject, "application/cloudevents+json; charset=utf-8", tc.props, tc.body); size < len(data) {
				t.Fatalf("dataSize = %d, but the encoding is %d bytes", size, len(data))
			}
			subject, ct, props, body, err := decodeData(data)
			if err != nil {
				t.Fatal(err)
			}
			want := maps.Clone(tc.props)
			if v, ok := want["small"]; ok {
				want["small"] = int64(v.(int)) // ints are stored as int64
			}
			if subject != tc.subject || ct != "application/cloudevents+json; charset=utf-8" || !bytes.Equal(body, tc.body) || !maps.Equal(props, want) {
				t.Fatalf("decoded %q %q %v %d bytes; want %q, %v, %d bytes", subject, ct, props, len(body), tc.subject, want, len(tc.body))
			}
		})
	}
}
