package sbemu

import (
	"testing"
	"time"
)

func TestParseISODuration(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"PT1M": time.Minute, "PT20S": 20 * time.Second, "PT1H": time.Hour, "P1D": 24 * time.Hour,
		"P1DT2H30M": 26*time.Hour + 30*time.Minute, "PT0.5S": 500 * time.Millisecond,
	} {
		if got, err := ParseISODuration(in); err != nil || got != want {
			t.Errorf("ParseISODuration(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "P", "PT", "1M", "PT1X", "P1W"} {
		if _, err := ParseISODuration(bad); err == nil {
			t.Errorf("ParseISODuration(%q) accepted", bad)
		}
	}
}

func TestParseConfig(t *testing.T) {
	ns, qs, err := ParseConfig([]byte(`{"UserConfig":{"Namespaces":[{"Name":"ns","Queues":[{"Name":"a","Properties":{"LockDuration":"PT30S","MaxDeliveryCount":3,"RequiresSession":true}}]}]}}`))
	if err != nil || ns != "ns" || len(qs) != 1 || qs[0].LockDuration != 30*time.Second || qs[0].MaxDeliveryCount != 3 || !qs[0].RequiresSession {
		t.Fatalf("%q %+v %v", ns, qs, err)
	}
	for _, bad := range []string{`{`, `{"UserConfig":{"Namespaces":[]}}`, `{"UserConfig":{"Namespaces":[{"Name":"n","Queues":[{"Name":""}]}]}}`,
		`{"UserConfig":{"Namespaces":[{"Name":"n","Queues":[{"Name":"a","Properties":{"LockDuration":"1m"}}]}]}}`,
		`{"UserConfig":{"Namespaces":[{"Name":"n","Queues":[{"Name":"a"},{"Name":"a"}]}]}}`} {
		if _, _, err := ParseConfig([]byte(bad)); err == nil {
			t.Errorf("accepted %s", bad)
		}
	}
}
