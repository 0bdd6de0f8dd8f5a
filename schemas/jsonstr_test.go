package schemas

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
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

// FuzzPartitionKey checks the hand-written walker against encoding/json on
// any valid JSON: escaped names decoded, the last of repeated names winning.
func FuzzPartitionKey(f *testing.F) {
	for _, s := range []string{`{"correlationId":"a"}`, `{"callConnectionId":"b","x":{"correlationId":"nested"}}`,
		`{"a":[1,{"b":"}"}],"correlationId":"c"}`, `{"correlationId":1,"callConnectionId":"d"}`, `[]`, `"s"`, `{"correlationId":"é\u00e9"}`,
		`{"correlation\u0049d":"escaped"}`, `{"correlationId":"first","correlationId":"last"}`, `{"callConnection\u0049d":"e\"f"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if !json.Valid(data) {
			return
		}
		var m map[string]json.RawMessage
		want := ""
		if json.Unmarshal(data, &m) == nil {
			var corr, conn string
			json.Unmarshal(m["correlationId"], &corr)
			json.Unmarshal(m["callConnectionId"], &conn)
			want = corr
			if want == "" {
				want = conn
			}
		}
		if got := PartitionKey(data); got != want {
			t.Fatalf("PartitionKey(%s) = %q, want %q", data, got, want)
		}
	})
}

// FuzzObjectMembersMatchesEncodingJSON checks the fast member walker, which
// the parsers and PartitionKey read objects with, against encoding/json on
// any valid object: the same names (escapes decoded, invalid UTF-8 replaced
// as encoding/json replaces it, the last of repeated names winning), the
// same raw values, and the same string values.
func FuzzObjectMembersMatchesEncodingJSON(f *testing.F) {
	for _, s := range []string{`{"correlationId":"a"}`, `{"correlation\u0049d":"esc","x":1}`, `{"a":1,"a":"two"}`,
		`{"\ud83d\ude00":"emoji","\u00e9":{"n":[1,{"m":"}"}]}}`, `{ "k" : "v" , "l" : null }`, "{\"\xff\":\"bad\",\"b\":\"\xfe\"}",
		`{"s":"\"quoted\" \\ \/ \b\f\n\r\t"}`, `{}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var want map[string]json.RawMessage
		if !json.Valid(data) || json.Unmarshal(data, &want) != nil || want == nil {
			return
		}
		got := map[string]json.RawMessage{}
		objectMembers(data, func(name, value []byte) bool {
			got[replaceInvalid(name)] = value
			return true
		})
		if len(got) != len(want) {
			t.Fatalf("%d members, encoding/json has %d", len(got), len(want))
		}
		for name, raw := range want {
			g, ok := got[name]
			if !ok {
				t.Fatalf("member %q missing", name)
			}
			if !bytes.Equal(g, raw) {
				t.Fatalf("member %q = %s, encoding/json %s", name, g, raw)
			}
			var s string
			if json.Unmarshal(raw, &s) == nil && raw[0] == '"' && stringValue(g) != s {
				t.Fatalf("member %q string %q, encoding/json %q", name, stringValue(g), s)
			}
		}
	})
}

// replaceInvalid replaces each invalid UTF-8 byte with U+FFFD, as
// encoding/json does when it decodes a string.
func replaceInvalid(b []byte) string {
	var sb strings.Builder
	for len(b) > 0 {
		r, size := utf8.DecodeRune(b)
		if r == utf8.RuneError && size == 1 {
			sb.WriteString("\uFFFD")
		} else {
			sb.Write(b[:size])
		}
		b = b[size:]
	}
	return sb.String()
}

// FuzzScanMatchesEncodingJSON holds the validating scanner the parsers use
// to json.Valid, and its record of a top-level array's elements to
// encoding/json's.
func FuzzScanMatchesEncodingJSON(f *testing.F) {
	for _, s := range []string{``, ` `, `{}`, `[]`, `[1,2]`, `[1,]`, `{"a":1,}`, `-0.5e+7`, `01`, `1.`, `-`, `1e`, `"\u00e9\ud83d"`, `"\x"`,
		"\"\x01\"", "\"\xff\"", `tru`, `true false`, `[{"a":[{"b":null}]}, "s", 3]`, `{"a" 1}`, "\t[\n]\r ",
		strings.Repeat("[", 10000) + strings.Repeat("]", 10000), strings.Repeat("[", 10001) + strings.Repeat("]", 10001)} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		sc := scanner{b: data, max: 3}
		got, want := sc.scan(), json.Valid(data)
		if got != want {
			t.Fatalf("scan(%q) = %v, json.Valid %v", data, got, want)
		}
		var elems []json.RawMessage
		if !want || json.Unmarshal(data, &elems) != nil {
			return
		}
		if sc.count != len(elems) || len(sc.spans) != min(len(elems), 3) {
			t.Fatalf("%d elements (%d recorded), encoding/json %d", sc.count, len(sc.spans), len(elems))
		}
		for i, sp := range sc.spans {
			if !bytes.Equal(data[sp.start:sp.end], elems[i]) {
				t.Fatalf("element %d = %s, encoding/json %s", i, data[sp.start:sp.end], elems[i])
			}
		}
	})
}

// FuzzAppendCompactMatchesEncodingJSON: compacting validated data writes
// what json.Compact writes.
func FuzzAppendCompactMatchesEncodingJSON(f *testing.F) {
	for _, s := range []string{"{ \"a\" : [ 1 , 2 ] ,\n \"b\":\"x y\\\" \\\\\" }", "[\r\n\t]", `"  "`, `1`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var want bytes.Buffer
		if json.Compact(&want, data) != nil {
			return
		}
		if got := appendCompact(nil, data); !bytes.Equal(got, want.Bytes()) {
			t.Fatalf("appendCompact(%q) = %q, json.Compact %q", data, got, want.Bytes())
		}
	})
}
