package schemas

import (
	"encoding/json"
	"testing"
)

func FuzzAppendStringMatchesEncodingJSON(f *testing.F) {
	for _, s := range []string{"", "plain", `q"uote\back`, "<tag>&amp;", "\x00\x01\b\f\n\r\t\x1f", "\u2028\u2029", "é漢字🙂", "\xff\xfe bad", "a\xc3"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		want, _ := json.Marshal(s)
		if got := appendString(nil, s); string(got) != string(want) {
			t.Fatalf("appendString(%q) = %s, want %s", s, got, want)
		}
	})
}

// FuzzPartitionKey checks the hand-written walker against encoding/json.
func FuzzPartitionKey(f *testing.F) {
	for _, s := range []string{`{"correlationId":"a"}`, `{"callConnectionId":"b","x":{"correlationId":"nested"}}`,
		`{"a":[1,{"b":"}"}],"correlationId":"c"}`, `{"correlationId":1,"callConnectionId":"d"}`, `[]`, `"s"`, `{"correlationId":"é\u00e9"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if !json.Valid(data) {
			return
		}
		var m map[string]json.RawMessage
		want := ""
		if json.Unmarshal(data, &m) == nil && !hasEscapedKey(data) {
			var corr, conn string
			json.Unmarshal(m["correlationId"], &corr)
			json.Unmarshal(m["callConnectionId"], &conn)
			want = corr
			if want == "" {
				want = conn
			}
		} else if m != nil {
			return // escaped keys: the walker does not decode them, by design
		}
		if got := PartitionKey(data); got != want {
			t.Fatalf("PartitionKey(%s) = %q, want %q", data, got, want)
		}
	})
}

func hasEscapedKey(data []byte) bool {
	for i := 0; i < len(data); i++ {
		if data[i] == '\\' {
			return true // conservative: any escape anywhere
		}
	}
	return false
}
