package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/hookbridge/hookbridge/internal/devissuer/devissuertest"
	"github.com/hookbridge/hookbridge/internal/freeport"
	"github.com/hookbridge/hookbridge/internal/sbemu"
	"github.com/hookbridge/hookbridge/internal/testlog"
	"github.com/hookbridge/hookbridge/internal/testwait"
	"github.com/hookbridge/hookbridge/relay"
	"github.com/hookbridge/hookbridge/relay/sqlite"
	"github.com/hookbridge/hookbridge/schemas"
)

// binary is the hookbridge executable built once for the tests that run it
// as a process.
var binary string

func TestMain(m *testing.M) {
	if loadRole() {
		return
	}
	dir, err := os.MkdirTemp("", "hookbridge-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "hookbridge")
	build := exec.Command("go", "build", "-o", binary, ".")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build hookbridge:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// runCLI runs the command tree in-process.
func runCLI(t *testing.T, environ map[string]string, args ...string) (string, string, error) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := run(ctx, args, func(k string) string { return environ[k] }, strings.NewReader(""), &stdout, &stderr)
	return stdout.String(), stderr.String(), err
}

func TestDemoBinary(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cmd := exec.Command(binary, "dev", "--demo", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
		"--queue", "sqlite:"+filepath.Join(dir, "demo.db"))
	cmd.Dir = dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		t.Fatalf("hookbridge dev --demo: %v\nstderr:\n%s", err, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	wantTypes := []string{"IncomingCall", "CallConnected", "PlayCompleted", "RecognizeCompleted", "CallDisconnected"}
	if len(lines) != len(wantTypes) {
		t.Fatalf("%d delivered events printed, want %d:\n%s", len(lines), len(wantTypes), stdout.String())
	}
	key := ""
	for i, l := range lines {
		var e map[string]any
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			t.Fatalf("line %d is not JSON: %q", i, l)
		}
		if e["type"] != "Microsoft.Communication."+wantTypes[i] {
			t.Errorf("event %d is %v, want %s", i, e["type"], wantTypes[i])
		}
		wantVerifier, wantRoute := "acs-jwt", "acs-callbacks"
		if i == 0 {
			wantVerifier, wantRoute = "entra-jwt", "eventgrid"
		}
		if e["hookbridgeverifier"] != wantVerifier || e["hookbridgeroute"] != wantRoute {
			t.Errorf("event %d came by %v, verified by %v", i, e["hookbridgeroute"], e["hookbridgeverifier"])
		}
		if i == 0 {
			key, _ = e["partitionkey"].(string)
		} else if e["partitionkey"] != key {
			t.Errorf("event %d has partition key %v, want the call's %s", i, e["partitionkey"], key)
		}
	}
	if !strings.Contains(stderr.String(), "delivered all 5 events") || !strings.Contains(stderr.String(), "subscription validated") {
		t.Errorf("no summary in stderr:\n%s", stderr.String())
	}
	t.Logf("demo took %v", time.Since(start))
}

func TestHelpShowsEverySetting(t *testing.T) {
	t.Parallel()
	for _, sub := range []string{"ingress", "worker", "dev"} {
		out, _, err := runCLI(t, nil, sub, "-h")
		if err != nil {
			t.Fatalf("%s -h: %v", sub, err)
		}
		for _, want := range []string{"--queue", "[$HOOKBRIDGE_QUEUE]", `(default "sqlite:hookbridge.db")`, "--log-level", "--admin-listen"} {
			if !strings.Contains(out, want) {
				t.Errorf("%s -h lacks %q:\n%s", sub, want, out)
			}
		}
		// Every flag names its environment variable.
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(strings.TrimSpace(l), "--") && !strings.Contains(l, "--help") && !strings.Contains(l, "$HOOKBRIDGE_") {
				t.Errorf("%s -h: flag without its environment variable: %q", sub, l)
			}
		}
	}
	out, _, _ := runCLI(t, nil, "ingress", "-h")
	for _, want := range []string{"--acs-audience", "--acs-oidc-url", "--listen", "--insecure-allow-unauthenticated", "--max-body-bytes"} {
		if !strings.Contains(out, want) {
			t.Errorf("ingress -h lacks %s", want)
		}
	}
}

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"unknown flag", nil, []string{"ingress", "--colour", "blue"}, "unknown flag: --colour"},
		{"unknown command", nil, []string{"frobnicate"}, `unknown command "frobnicate"`},
		{"no verifier", nil, []string{"ingress", "--queue", "sqlite:" + filepath.Join(t.TempDir(), "q.db"), "--listen", "127.0.0.1:0"}, "--insecure-allow-unauthenticated"},
		{"bad queue URL", nil, []string{"worker", "--queue", "redis://x"}, "unknown queue URL"},
		{"bad queue option", nil, []string{"worker", "--queue", "sqlite:q.db?lock=forever"}, `option lock="forever"`},
		{"bad log level", nil, []string{"worker", "--log-level", "loud"}, "--log-level"},
		{"bad deliver", nil, []string{"worker", "--deliver", "ftp://x"}, "--deliver"},
		{"bad env value", map[string]string{"HOOKBRIDGE_CONCURRENCY": "many"}, []string{"worker"}, "HOOKBRIDGE_CONCURRENCY"},
		{"remote plain-http OIDC", nil, []string{"ingress", "--queue", "sqlite:" + filepath.Join(t.TempDir(), "q.db"), "--acs-audience", "x", "--acs-oidc-url", "http://example.com/oidc"}, "plain http is allowed only to a loopback address"},
		{"missing queue directory", nil, []string{"worker", "--queue", "sqlite:/nonexistent/dir/q.db", "--admin-listen", "127.0.0.1:0"}, "does not exist"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, _, err := runCLI(t, tt.env, tt.args...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tt.want)
			}
		})
	}
	_, _, err := runCLI(t, nil, "worker", "--colour")
	var ue usageError
	if !errors.As(err, &ue) {
		t.Errorf("a flag error is not a usage error (exit 2): %v", err)
	}
}

func TestEnvironmentFillsFlags(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	// A bad delivery URL from the environment proves the variable was read;
	// a command-line flag wins over it.
	env := map[string]string{"HOOKBRIDGE_DELIVER": "gopher://x", "HOOKBRIDGE_QUEUE": "sqlite:" + filepath.Join(dir, "q.db")}
	_, _, err := runCLI(t, env, "worker")
	if err == nil || !strings.Contains(err.Error(), "gopher") {
		t.Fatalf("HOOKBRIDGE_DELIVER not applied: %v", err)
	}
	_, _, err = runCLI(t, env, "worker", "--deliver", "ftp://y")
	if err == nil || !strings.Contains(err.Error(), "ftp") {
		t.Fatalf("the flag did not win over the environment: %v", err)
	}
}

func TestVersion(t *testing.T) {
	t.Parallel()
	out, _, err := runCLI(t, nil, "version")
	if err != nil || !strings.HasPrefix(out, "hookbridge ") {
		t.Fatalf("version: %q %v", out, err)
	}
}

func TestSecretFromFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(path, []byte("s3cret\n"), 0o600)
	got, err := secret(func(k string) string { return map[string]string{"X_FILE": path}[k] }, "X")
	if err != nil || got != "s3cret" {
		t.Errorf("secret from file: %q %v", got, err)
	}
	if _, err := secret(func(string) string { return "v" }, "X"); err == nil {
		t.Error("both X and X_FILE accepted")
	}
	// A variable naming the wrong file is refused, not read whole.
	_, err = secret(func(k string) string { return map[string]string{"X_FILE": "/dev/zero"}[k] }, "X")
	var ue usageError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), "is it the right file") {
		t.Errorf("secret from /dev/zero: %v, want a usage error", err)
	}
}

// process is a child process (the hookbridge binary, or this test binary
// in a role) with its stderr captured.
type process struct {
	cmd    *exec.Cmd
	stderr *testlog.Buffer
}

// startProcess starts cmd with its stderr captured; it is killed, if still
// running, when the test ends.
func startProcess(t *testing.T, cmd *exec.Cmd) *process {
	t.Helper()
	p := &process{cmd: cmd, stderr: &testlog.Buffer{}}
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		p.cmd.Wait()
	})
	return p
}

// start starts the hookbridge binary with args, in this process's
// environment.
func start(t *testing.T, args ...string) *process {
	t.Helper()
	return startWithEnv(t, nil, args...)
}

// stop sends SIGTERM and waits for a clean exit.
func (p *process) stop(t *testing.T) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("%s exited with %v:\n%s", p.cmd.Args[1], err, p.stderr.String())
		}
	case <-time.After(20 * time.Second):
		t.Errorf("%s did not stop on SIGTERM", p.cmd.Args[1])
	}
}

// waitHTTP waits until url answers 200.
func waitHTTP(t *testing.T, url string) {
	t.Helper()
	testwait.Until(t, 20*time.Second, url+" answering 200", func() bool {
		resp, err := http.Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
}

// TestIngressAndWorkerProcesses runs `hookbridge ingress` and `hookbridge
// worker` as two processes sharing one SQLite file, kills the worker in the
// middle of the run, and checks every accepted event reaches the backend.
func TestIngressAndWorkerProcesses(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("process test skipped in -short mode")
	}
	dir := t.TempDir()
	queue := "sqlite:" + filepath.Join(dir, "shared.db") + "?lock=2s"

	// The development issuer stands in for Microsoft's.
	iss := devissuertest.NewServer(t, "acs-resource")

	var mu sync.Mutex
	got := map[string]int{}
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var e struct{ ID string }
		json.NewDecoder(r.Body).Decode(&e)
		mu.Lock()
		got[e.ID]++
		mu.Unlock()
	}))
	defer backend.Close()

	listenAddr, adminAddr := freeport.Addr(t), freeport.Addr(t)
	ing := start(t, "ingress", "--queue", queue, "--listen", listenAddr, "--admin-listen", adminAddr,
		"--acs-audience", "acs-resource", "--acs-oidc-url", iss.DiscoveryURL())
	waitHTTP(t, "http://"+adminAddr+"/readyz")
	workerArgs := []string{"worker", "--queue", queue, "--deliver", backend.URL, "--admin-listen", "127.0.0.1:0"}
	wrk := start(t, workerArgs...)

	send := func(i int) {
		tok, _ := iss.ACSToken("")
		body := fmt.Sprintf(`[{"specversion":"1.0","id":"p-%d","source":"s","type":"Microsoft.Communication.PlayCompleted","data":{"correlationId":"call-%d"}}]`, i, i%7)
		req, _ := http.NewRequest(http.MethodPost, "http://"+listenAddr+"/acs/callbacks", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+tok)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Errorf("event %d: %v", i, err)
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("event %d: status %d", i, resp.StatusCode)
		}
	}
	const n = 200
	for i := range n / 2 {
		send(i)
	}
	// Kill the worker without warning, keep sending, then start another.
	wrk.cmd.Process.Kill()
	wrk.cmd.Wait()
	for i := n / 2; i < n; i++ {
		send(i)
	}
	wrk2 := start(t, workerArgs...)
	deadline := time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		delivered := len(got)
		mu.Unlock()
		if delivered == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d accepted events delivered\ningress:\n%s\nworker:\n%s", delivered, n, ing.stderr.String(), wrk2.stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	wrk2.stop(t)
	ing.stop(t)
	if strings.Contains(ing.stderr.String(), "eyJ") {
		t.Error("a token appears in the ingress log")
	}
	// The access log has one line per request, with no query strings.
	sc := bufio.NewScanner(strings.NewReader(ing.stderr.String()))
	lines := 0
	for sc.Scan() {
		if regexp.MustCompile(`msg=request .*route=/acs/callbacks status=200`).MatchString(sc.Text()) {
			lines++
		}
	}
	if lines != n {
		t.Errorf("%d access log lines for %d requests", lines, n)
	}
}

// TestREADMEListsEveryFlag keeps the README's configuration reference true:
// every flag of every command is documented there.
func TestREADMEListsEveryFlag(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []*cobra.Command{ingressCommand(nil), workerCommand(nil), devCommand(nil), callbackURLCommand(nil)} {
		cmd.Flags().VisitAll(func(f *pflag.Flag) {
			if !bytes.Contains(readme, []byte("`--"+f.Name+"`")) {
				t.Errorf("README does not document %s --%s", cmd.Name(), f.Name)
			}
		})
	}
}

func TestCallbackURLCommand(t *testing.T) {
	t.Parallel()
	keys := "k2:" + strings.Repeat("n", 32) + ",k1:" + strings.Repeat("o", 32)
	out, _, err := runCLI(t, map[string]string{envCallbackSigning: keys}, "callback-url", "--base", "https://hooks.example.com/acs/callbacks", "--ttl", "2h")
	if err != nil {
		t.Fatal(err)
	}
	u := strings.TrimSpace(out)
	if !strings.HasPrefix(u, "https://hooks.example.com/acs/callbacks?") || !strings.Contains(u, "hbkid=k2") || !strings.Contains(u, "hbsig=") {
		t.Errorf("callback-url printed %q", u)
	}
	for _, tt := range []struct {
		env  map[string]string
		args []string
		want string
	}{
		{nil, []string{"callback-url", "--base", "https://h/x"}, envCallbackSigning},
		{map[string]string{envCallbackSigning: "k:short"}, []string{"callback-url", "--base", "https://h/x"}, "at least 32"},
		{map[string]string{envCallbackSigning: keys}, []string{"callback-url"}, "--base is required"},
		{map[string]string{envCallbackSigning: keys}, []string{"callback-url", "--base", "ftp://h/x"}, "absolute http(s) URL"},
		{map[string]string{envCallbackSigning: keys}, []string{"callback-url", "--base", "https://h/x", "--ttl", "-1h"}, "must be positive"},
		{map[string]string{envCallbackSigning: keys}, []string{"callback-url", "--base", "https://h/x", "--ttl", "1ns"}, "use at least 1m"},
	} {
		if _, _, err := runCLI(t, tt.env, tt.args...); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%v %v: err = %v, want %q", tt.env, tt.args, err, tt.want)
		}
	}
}

func TestIngressSecretsFromEnvironment(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "keys")
	os.WriteFile(keyFile, []byte("short\n"), 0o600)
	base := []string{"ingress", "--queue", "sqlite:" + filepath.Join(dir, "q.db"), "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"}
	for _, tt := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{envACSAPIKeys: "tooshort"}, "HOOKBRIDGE_ACS_API_KEYS: api key 1 is 8 characters"},
		{map[string]string{envEventGridAPIKeys + "_FILE": keyFile}, "HOOKBRIDGE_EVENTGRID_API_KEYS: api key 1 is 5 characters"},
		{map[string]string{envACSAPIKeys: "x", envACSAPIKeys + "_FILE": keyFile}, "both"},
		{map[string]string{envCallbackSigning: "nocolon"}, "keyid:secret"},
		{map[string]string{"HOOKBRIDGE_EVENTGRID_ENTRA_TENANT": testTenantID}, "--eventgrid-entra-audience"},
	} {
		if _, _, err := runCLI(t, tt.env, base...); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%v: err = %v, want %q", tt.env, err, tt.want)
		}
	}
}

const testTenantID = "72f988bf-86f1-41af-91ab-2d7cd011db47"

// seedDeadLetters makes a queue file with three dead-lettered events.
func seedDeadLetters(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "dlq.db")
	q, err := sqlite.Open(context.Background(), sqlite.Config{Path: path}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	for i, typ := range []string{"IncomingCall", "PlayFailed", "PlayFailed"} {
		e := schemas.Event{ID: fmt.Sprintf("evt-%d", i), Source: "s", Type: "Microsoft.Communication." + typ,
			Data: json.RawMessage(fmt.Sprintf(`{"correlationId":"call-%d"}`, i)), PartitionKey: fmt.Sprintf("call-%d", i)}
		m, _ := relay.NewMessage(&e)
		if err := q.SendBatch(context.Background(), []relay.Message{m}); err != nil {
			t.Fatal(err)
		}
		got, err := q.Receive(context.Background(), 1)
		if err != nil {
			t.Fatal(err)
		}
		reason := "BackendRejected"
		if i == 2 {
			reason = "MaxDeliveryCountExceeded"
		}
		if err := q.DeadLetter(context.Background(), got[0], reason, "POST http://backend answered 400"); err != nil {
			t.Fatal(err)
		}
	}
	return "sqlite:" + path
}

// TestRefusedStartCreatesNothing: a start refused for its flags leaves no
// queue file (nor a notification file) behind.
func TestRefusedStartCreatesNothing(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	queue := "sqlite:" + filepath.Join(dir, "new.db")
	for _, args := range [][]string{
		{"ingress", "--queue", queue, "--listen", "127.0.0.1:0", "--admin-listen", ""},
		{"ingress", "--queue", queue, "--insecure-allow-unauthenticated", "--acs-replay-defence", "maybe"},
		{"ingress", "--queue", queue, "--insecure-allow-unauthenticated", "--max-body-bytes", "-1"},
		{"worker", "--queue", queue, "--deliver", "stdout", "--min-backoff", "5m", "--max-backoff", "1m"},
		{"dev", "--queue", queue, "--max-body-bytes", "-1"},
		{"ingress", "--queue", queue, "--insecure-allow-unauthenticated", "--spool", "sqlite:" + filepath.Join(dir, "spool.db")},
		{"ingress", "--queue", "servicebus://ns.servicebus.windows.net/q", "--insecure-allow-unauthenticated", "--spool", filepath.Join(dir, "spool.db")},
		{"dev", "--queue", queue, "--spool-after", "2s"},
	} {
		_, _, err := runCLI(t, nil, args...)
		var ue usageError
		if !errors.As(err, &ue) {
			t.Errorf("%v: %v, want a usage error", args, err)
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 0 {
			t.Fatalf("%v left %d files behind, the first %s", args, len(entries), entries[0].Name())
		}
	}
}

// TestDLQRefusesWhatWouldActOnEverything: an empty filter (a script's
// unset variable), a confirmation from the environment, a mistyped queue
// path and a mistyped subcommand are usage errors that change nothing.
func TestDLQRefusesWhatWouldActOnEverything(t *testing.T) {
	t.Parallel()
	queue := seedDeadLetters(t)
	missing := "sqlite:" + filepath.Join(t.TempDir(), "typo.db")
	for _, tc := range []struct {
		name    string
		environ map[string]string
		args    []string
		want    string
	}{
		{"empty --id", nil, []string{"dlq", "purge", "--queue", queue, "--yes", "--id", ""}, "--id is empty"},
		{"empty --partition-key", nil, []string{"dlq", "replay", "--queue", queue, "--partition-key", ""}, "--partition-key is empty"},
		{"empty --type", nil, []string{"dlq", "purge", "--queue", queue, "--yes", "--type="}, "--type is empty"},
		{"--yes from the environment", map[string]string{"HOOKBRIDGE_YES": "true"}, []string{"dlq", "purge", "--queue", queue}, "--yes"},
		{"mistyped queue path", nil, []string{"dlq", "list", "--queue", missing}, "no queue file"},
		{"mistyped subcommand", nil, []string{"dlq", "repaly", "--queue", queue}, `unknown command "repaly"`},
		{"mistyped command", nil, []string{"ingres"}, `unknown command "ingres"`},
	} {
		_, stderr, err := runCLI(t, tc.environ, tc.args...)
		var ue usageError
		if !errors.As(err, &ue) || !strings.Contains(err.Error()+stderr, tc.want) {
			t.Errorf("%s: %v (stderr %q), want a usage error mentioning %q", tc.name, err, stderr, tc.want)
		}
	}
	out, _, err := runCLI(t, nil, "dlq", "list", "--queue", queue, "--json")
	if err != nil || strings.Count(out, `"sequence_number"`) != 3 {
		t.Errorf("after the refused commands: %v\n%s\nwant the 3 dead letters still there", err, out)
	}
	if _, err := os.Stat(strings.TrimPrefix(missing, "sqlite:")); !os.IsNotExist(err) {
		t.Errorf("the mistyped queue path was created: %v", err)
	}
}

func TestDLQCommands(t *testing.T) {
	t.Parallel()
	queue := seedDeadLetters(t)
	out, _, err := runCLI(t, nil, "dlq", "list", "--queue", queue, "--json")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 {
		t.Fatalf("list --json: %d lines:\n%s", len(lines), out)
	}
	var rec map[string]any
	json.Unmarshal([]byte(lines[0]), &rec)
	for _, k := range []string{"message_id", "event_id", "type", "partition_key", "reason", "description", "delivery_count"} {
		if _, ok := rec[k]; !ok {
			t.Errorf("list --json lacks %q: %s", k, lines[0])
		}
	}
	if rec["event_id"] != "evt-0" || rec["type"] != "Microsoft.Communication.IncomingCall" || rec["partition_key"] != "call-0" {
		t.Errorf("record %v", rec)
	}
	out, _, err = runCLI(t, nil, "dlq", "list", "--queue", queue, "--reason", "BackendRejected")
	if err != nil || !strings.Contains(out, "SEQ") || strings.Count(out, "BackendRejected") != 2 {
		t.Errorf("list table: %v\n%s", err, out)
	}
	out, _, err = runCLI(t, nil, "dlq", "show", "--queue", queue, "evt-1")
	if err != nil || !strings.Contains(out, `"correlationId": "call-1"`) || !strings.Contains(out, "BackendRejected") {
		t.Errorf("show: %v\n%s", err, out)
	}
	out, stderr, err := runCLI(t, nil, "dlq", "replay", "--queue", queue, "--type", "Microsoft.Communication.PlayFailed", "--dry-run")
	if err != nil || strings.Count(out, "\n") != 2 || !strings.Contains(stderr, "would replay 2") {
		t.Errorf("dry run: %v\n%s%s", err, out, stderr)
	}
	_, stderr, err = runCLI(t, nil, "dlq", "replay", "--queue", queue, "--id", "evt-1")
	if err != nil || !strings.Contains(stderr, "replayed 1 of 1") {
		t.Errorf("replay: %v %s", err, stderr)
	}
	_, _, err = runCLI(t, nil, "dlq", "purge", "--queue", queue, "--reason", "MaxDeliveryCountExceeded")
	var ue usageError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), "--yes") {
		t.Errorf("purge without --yes: %v", err)
	}
	_, stderr, err = runCLI(t, nil, "dlq", "purge", "--queue", queue, "--reason", "MaxDeliveryCountExceeded", "--yes")
	if err != nil || !strings.Contains(stderr, "purged 1 of 1") {
		t.Errorf("purge: %v %s", err, stderr)
	}
	out, _, _ = runCLI(t, nil, "dlq", "list", "--queue", queue, "--json")
	if n := strings.Count(out, "\n"); n != 1 {
		t.Errorf("%d dead letters left, want 1:\n%s", n, out)
	}
	if _, _, err := runCLI(t, nil, "dlq", "list", "--queue", queue, "--since", "yesterday"); err == nil {
		t.Error("--since yesterday accepted")
	}
}

// TestIngressAndWorkerOverServiceBus runs both processes on a Service Bus
// queue (the in-repo emulator, reached with a connection string from the
// environment) and checks that every accepted event reaches the backend, in
// order per call.
func TestIngressAndWorkerOverServiceBus(t *testing.T) {
	t.Parallel()
	emu := emulate(t, sbemu.QueueConfig{Name: "hookbridge-events", RequiresSession: true,
		RequiresDuplicateDetection: true, LockDuration: 10 * time.Second})

	var mu sync.Mutex
	got := map[string][]string{}
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var e struct {
			ID  string `json:"id"`
			Key string `json:"partitionkey"`
		}
		json.NewDecoder(r.Body).Decode(&e)
		mu.Lock()
		got[e.Key] = append(got[e.Key], e.ID)
		mu.Unlock()
	}))
	defer backend.Close()

	const key = "k1-0123456789abcdef-process"
	listenAddr, adminAddr := freeport.Addr(t), freeport.Addr(t)
	env := append(sbEnv(emu), envACSAPIKeys+"="+key)
	ing := startWithEnv(t, env, "ingress", "--queue", "servicebus:///hookbridge-events", "--listen", listenAddr, "--admin-listen", adminAddr)
	wrk := startWithEnv(t, env, "worker", "--queue", "servicebus:///hookbridge-events", "--deliver", backend.URL, "--admin-listen", "127.0.0.1:0")
	waitHTTP(t, "http://"+adminAddr+"/readyz")
	const calls, perCall = 3, 5
	for i := range perCall {
		for c := range calls {
			body := fmt.Sprintf(`[{"specversion":"1.0","id":"c%d-%d","source":"s","type":"Microsoft.Communication.PlayCompleted","data":{"correlationId":"call-%d"}}]`, c, i, c)
			resp, err := http.Post("http://"+listenAddr+"/acs/callbacks?key="+key, "application/json", strings.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("status %d\n%s", resp.StatusCode, ing.stderr.String())
			}
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		n := 0
		for _, ids := range got {
			n += len(ids)
		}
		mu.Unlock()
		if n == calls*perCall {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d delivered\ningress:\n%s\nworker:\n%s", n, calls*perCall, ing.stderr.String(), wrk.stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	for c := range calls {
		ids := got[fmt.Sprintf("call-%d", c)]
		for i, id := range ids {
			if id != fmt.Sprintf("c%d-%d", c, i) {
				t.Errorf("call-%d delivered out of order: %v", c, ids)
				break
			}
		}
	}
}
