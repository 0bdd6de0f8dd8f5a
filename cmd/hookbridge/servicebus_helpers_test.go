package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hookbridge/hookbridge/internal/sbemu"
	"github.com/hookbridge/hookbridge/internal/sbemu/sbemutest"
	"github.com/hookbridge/hookbridge/relay"
	"github.com/hookbridge/hookbridge/relay/relaytest"
	"github.com/hookbridge/hookbridge/relay/servicebus"
	"github.com/hookbridge/hookbridge/schemas"
)

// emulate starts an in-process Service Bus emulator with the given queues.
func emulate(t *testing.T, queues ...sbemu.QueueConfig) *sbemu.Server {
	t.Helper()
	return sbemutest.NewServer(t, queues...).Server
}

// sbEnv is the environment of a hookbridge process reaching emu.
func sbEnv(emu *sbemu.Server) []string {
	return append(os.Environ(), envServiceBusConnStr+"="+emu.ConnectionString())
}

// startWithEnv starts the hookbridge binary with env (nil: this process's);
// stdout is discarded.
func startWithEnv(t *testing.T, env []string, args ...string) *process {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = env
	return startProcess(t, cmd)
}

// runBinary runs the hookbridge binary to completion and returns its
// stdout, stderr and exit status.
func runBinary(t *testing.T, env []string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := exec.CommandContext(ctx, binary, args...)
	c.Env = env
	var stdout, stderr strings.Builder
	c.Stdout, c.Stderr = &stdout, &stderr
	err := c.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%v: %v", args, err)
	}
	return stdout.String(), stderr.String(), code
}

// sbQueue opens a queue on emu from the test, as a sender.
func sbQueue(t *testing.T, emu *sbemu.Server, name string) *servicebus.Queue {
	t.Helper()
	q, err := servicebus.Open(context.Background(), servicebus.Config{Queue: name, ConnectionString: emu.ConnectionString()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	return q
}

// callEvent is event seq of call c, with the given type.
func callEvent(t *testing.T, typ string, c, seq int) relay.Message {
	t.Helper()
	key := fmt.Sprintf("call-%d", c)
	return relaytest.EventMessage(t, schemas.Event{ID: fmt.Sprintf("c%d-%04d", c, seq), Source: "calling/callConnections/" + key, Type: typ,
		Data: json.RawMessage(fmt.Sprintf(`{"correlationId":%q,"seq":%d}`, key, seq)), PartitionKey: key, Received: time.Now()})
}

// counter reads a counter with one label from a Prometheus text page.
func counter(t *testing.T, metricsURL, name, label, value string) float64 {
	t.Helper()
	resp, err := http.Get(metricsURL)
	if err != nil {
		t.Fatalf("scrape %s: %v", metricsURL, err)
	}
	defer resp.Body.Close()
	prefix := fmt.Sprintf(`%s{%s=%q} `, name, label, value)
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), prefix); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", sc.Text(), err)
			}
			return f
		}
	}
	return -1
}
