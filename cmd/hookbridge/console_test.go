package main

import (
	"errors"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/hookbridge/hookbridge/internal/freeport"
)

func TestConsoleUsageErrors(t *testing.T) {
	t.Parallel()
	queue := seedDeadLetters(t)
	missing := "sqlite:" + filepath.Join(t.TempDir(), "nope.db")
	tests := []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"public listener without a token", nil, []string{"--listen", "0.0.0.0:0", "--queue", queue}, "HOOKBRIDGE_CONSOLE_TOKEN"},
		{"every interface without a token", nil, []string{"--listen", ":0", "--queue", queue}, "not a loopback address"},
		{"short token", map[string]string{"HOOKBRIDGE_CONSOLE_TOKEN": "short"}, []string{"--queue", queue}, "at least 16"},
		{"missing queue file", nil, []string{"--queue", missing}, "no queue file"},
		{"missing spool file", nil, []string{"--queue", queue, "--spool", missing}, "no queue file"},
		{"spool not sqlite", nil, []string{"--queue", queue, "--spool", "servicebus:///q", "--listen", "127.0.0.1:0"}, "the spool is an embedded queue file"},
		{"metrics URL", nil, []string{"--queue", queue, "--metrics-from", "ftp://x", "--listen", "127.0.0.1:0"}, "metrics URL"},
		{"fast scrape", nil, []string{"--queue", queue, "--metrics-interval", "10ms"}, "--metrics-interval"},
		{"trusted proxy by name", nil, []string{"--queue", queue, "--trusted-proxy", "proxy.internal"}, "--trusted-proxy: trusted proxy \"proxy.internal\" is neither an IP address nor a CIDR range"},
	}
	for _, tt := range tests {
		_, _, err := runCLI(t, tt.env, append([]string{"console"}, tt.args...)...)
		var ue usageError
		if err == nil || !errors.As(err, &ue) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want a usage error about %q", tt.name, err, tt.want)
		}
	}
}

// TestConsoleBinary runs `hookbridge console` as a process on a public
// address with a token from a file: it asks for a login, shows the
// dead-lettered messages once logged in, never logs the token, and stops
// cleanly on SIGTERM.
func TestConsoleBinary(t *testing.T) {
	t.Parallel()
	queue := seedDeadLetters(t)
	const token = "alice:c0ns0le-t0ken-0123456789abcdef"
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := freeport.Addr(t)
	_, port, _ := strings.Cut(addr, ":")
	p := startWithEnv(t, append(os.Environ(), "HOOKBRIDGE_CONSOLE_TOKEN_FILE="+tokenFile), "console", "--listen", "0.0.0.0:"+port, "--queue", queue)
	base := "http://" + addr
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar}
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := c.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	waitHTTP(t, base+"/login")
	status, body := get("/dlq")
	if status != http.StatusOK || !strings.Contains(body, `name="token"`) {
		t.Fatalf("before login: %d, want the login form:\n%s", status, body)
	}
	csrf := regexp.MustCompile(`name="csrf" value="([0-9a-f]+)"`).FindStringSubmatch(body)
	next := regexp.MustCompile(`name="next" value="([^"]+)"`).FindStringSubmatch(body)
	if csrf == nil || next == nil || next[1] != "/dlq" {
		t.Fatalf("login form: %s", body)
	}
	resp, err := c.PostForm(base+"/login", url.Values{"csrf": {csrf[1]}, "next": {next[1]}, "token": {strings.TrimPrefix(token, "alice:")}})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), "Microsoft.Communication.PlayFailed") || !strings.Contains(string(b), "alice") {
		t.Fatalf("after login: %d\n%s", resp.StatusCode, b)
	}
	p.stop(t)
	logs := p.stderr.String()
	if !strings.Contains(logs, "console listening") || !strings.Contains(logs, "identity=alice") || strings.Contains(logs, "c0ns0le-t0ken") {
		t.Errorf("logs:\n%s", logs)
	}
}

// TestREADMEDocumentsConsole keeps the README's console section true: every
// flag of the command is documented there.
func TestREADMEDocumentsConsole(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(readme), "### `hookbridge console`")
	if !ok {
		t.Fatal("README has no hookbridge console section")
	}
	section, _, _ = strings.Cut(section, "\n### ")
	consoleCommand(nil).Flags().VisitAll(func(f *pflag.Flag) {
		if f.Name != "help" && !strings.Contains(section, "`--"+f.Name+"`") {
			t.Errorf("the README's console section does not document --%s", f.Name)
		}
	})
	for _, want := range []string{"HOOKBRIDGE_CONSOLE_TOKEN", "Service Bus"} {
		if !strings.Contains(section, want) {
			t.Errorf("the README's console section does not mention %s", want)
		}
	}
}
