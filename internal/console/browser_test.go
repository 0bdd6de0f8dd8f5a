package console_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/hookbridge/hookbridge/consumer"
	"github.com/hookbridge/hookbridge/internal/console"
	"github.com/hookbridge/hookbridge/internal/sqlitetest"
	"github.com/hookbridge/hookbridge/internal/testrun"
	"github.com/hookbridge/hookbridge/relay"
	"github.com/hookbridge/hookbridge/relay/sqlite"
	"github.com/hookbridge/hookbridge/schemas"
)

// chromium finds a Chromium to drive, or skips the test (fails with
// HOOKBRIDGE_REQUIRE_BROWSER=1).
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("HOOKBRIDGE_REQUIRE_BROWSER") == "1" {
		t.Fatal("no Chromium found (apt-get install chromium) and HOOKBRIDGE_REQUIRE_BROWSER=1")
	}
	t.Skip("no Chromium found (apt-get install chromium); set HOOKBRIDGE_REQUIRE_BROWSER=1 to fail instead")
	return ""
}

// fillDemo queues a few calls the way an afternoon of trouble looks: a
// backend that refused one call's IncomingCall, a call whose events wait
// behind it, a retry in progress, and a hostile event.
func fillDemo(t *testing.T, q *sqlite.Queue) {
	t.Helper()
	fill(t, q)
	ctx := context.Background()
	var msgs []relay.Message
	for _, c := range []string{"b81d-call-correlation-0002", "c42e-call-correlation-0003", "d93f-call-correlation-0004"} {
		msgs = append(msgs,
			event(t, c+"-connected", "Microsoft.Communication.CallConnected", c, `{"correlationId":"`+c+`"}`),
			event(t, c+"-play", "Microsoft.Communication.PlayCompleted", c, `{"correlationId":"`+c+`"}`),
			event(t, c+"-recognize", "Microsoft.Communication.RecognizeCompleted", c, `{"correlationId":"`+c+`"}`))
	}
	if err := q.SendBatch(ctx, msgs); err != nil {
		t.Fatal(err)
	}
	got, err := q.Receive(ctx, 4)
	if err != nil || len(got) != 4 {
		t.Fatalf("receive: %d, %v", len(got), err)
	}
	for _, m := range got {
		switch m.SessionID {
		case "b81d-call-correlation-0002":
			err = q.Abandon(ctx, m, 90*time.Second) // a retry waiting out its backoff
		case "c42e-call-correlation-0003":
			// held: in delivery
		case "d93f-call-correlation-0004":
			err = q.DeadLetter(ctx, m, relay.ReasonMaxDelivery, "the backend answered 503 Service Unavailable ten times")
		default:
			err = q.Abandon(ctx, m, 0) // tried once, waiting again
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestBrowser drives the console in headless Chromium: the overview, a call
// found by its correlation ID, its dead-lettered IncomingCall opened and
// replayed (preview, then confirm), and a real worker delivering the copy.
// Screenshots of each page are kept in the test's artifact directory
// (go test -artifacts) and, when HOOKBRIDGE_CONSOLE_SCREENSHOTS names a
// directory, there too.
// newBrowser starts a headless Chromium with a profile of its own, closed
// when the test ends.
func newBrowser(t *testing.T, exe string) context.Context {
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(exe),
		chromedp.Flag("headless", true),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancelAlloc)
	ctx, cancelBrowser := chromedp.NewContext(actx)
	t.Cleanup(cancelBrowser)
	attach(t, ctx)
	return ctx
}

// attach starts ctx's browser or tab now, so that it lives as long as ctx:
// the first action run on a chromedp context ties the browser (or tab) to
// that action's context, which a step's deadline would end.
func attach(t *testing.T, ctx context.Context) {
	t.Helper()
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start the browser: %v", err)
	}
}

// stepper returns a function running actions in ctx's tab, each call with
// a deadline of its own, that fails the test with what the page shows.
func stepper(t *testing.T, ctx context.Context) func(what string, actions ...chromedp.Action[chromedp.Void]) {
	return func(what string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := chromedp.Do(sctx, actions...); err != nil {
			dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			page, _ := chromedp.Run(dctx, chromedp.Evaluate[string](`document.location.href + "\n" + document.body.innerText`))
			t.Fatalf("%s: %v; the page shows:\n%s", what, err, page)
		}
	}
}

// TestBrowserLinkFromAnotherSite: an operator logged in to the console
// follows a link to one of its pages from another site (an alert, a chat
// message) and gets the page, still logged in. A SameSite=Strict session
// cookie is withheld on such a navigation: the console showed its login form
// and replaced the session cookie with a new, logged-out one.
func TestBrowserLinkFromAnotherSite(t *testing.T) {
	t.Parallel()
	exe := chromium(t)
	q := sqlitetest.Open(t, sqlite.Config{})
	fillDemo(t, q)
	const secret = "s3cret-token-0123456789abcdef"
	c, err := console.New(console.Config{Queue: q, QueueName: "sqlite:queue.db",
		Tokens: []console.Token{{Name: "alice", Secret: secret}}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(c) // http://127.0.0.1:<port>
	defer srv.Close()
	// Another site: localhost is not the same site as 127.0.0.1.
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprintf(w, `<!doctype html><a id="to-console" href="%s/dlq">the dead letters</a>`, srv.URL)
	}))
	defer other.Close()
	otherURL := strings.Replace(other.URL, "127.0.0.1", "localhost", 1)

	ctx := newBrowser(t, exe)
	step := stepper(t, ctx)
	step("log in", chromedp.Navigate(srv.URL+"/login"),
		chromedp.SendKeys(`input[name="token"]`, secret, chromedp.NodeVisible),
		chromedp.Submit(`input[name="token"]`), chromedp.WaitVisible("#sessions"))
	step("open the other site", chromedp.Navigate(otherURL), chromedp.WaitVisible("#to-console"))
	step("follow its link to the console's dead letters", chromedp.Click("#to-console", chromedp.NodeVisible), chromedp.WaitVisible("#deadletters"))
	step("still logged in on the console's own pages", chromedp.Navigate(srv.URL+"/"), chromedp.WaitVisible("#sessions"))
}

func TestBrowser(t *testing.T) {
	t.Parallel()
	exe := chromium(t)
	q := sqlitetest.Open(t, sqlite.Config{})
	fillDemo(t, q)
	c, err := console.New(console.Config{Queue: q, QueueName: "sqlite:/var/lib/hookbridge/queue.db", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(c)
	defer srv.Close()

	ctx := newBrowser(t, exe)

	// Any script error or blocked resource (a CSP violation) fails the test.
	var mu sync.Mutex
	var pageErrors []string
	if err := chromedp.Listen(ctx, func(ev any) {
		mu.Lock()
		defer mu.Unlock()
		switch e := ev.(type) {
		case *log.EventEntryAdded:
			if e.Entry.Level == log.EntryLevelError {
				pageErrors = append(pageErrors, e.Entry.Text)
			}
		case *runtime.EventExceptionThrown:
			pageErrors = append(pageErrors, e.ExceptionDetails.Text)
		}
	}); err != nil {
		t.Fatalf("start the browser: %v", err)
	}
	if _, err := chromedp.Call(ctx, log.Enable, cdp.Empty{}); err != nil {
		t.Fatalf("enable the log domain: %v", err)
	}
	step := stepper(t, ctx)
	read := func(what string, a chromedp.Action[string]) string {
		t.Helper()
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		v, err := chromedp.Run(sctx, a)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		return v
	}
	shots := map[string][]byte{}
	shot := func(name string) {
		t.Helper()
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		b, err := chromedp.Run(sctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatalf("screenshot %s: %v", name, err)
		}
		shots[name] = b
	}

	step("overview", chromedp.Navigate(srv.URL+"/"), chromedp.WaitVisible("#sessions"))
	shot("overview")
	// Find the call by its correlation ID, from the search box.
	step("find", chromedp.SendKeys(`form.search input[name=q]`, callID+"\n"), chromedp.WaitVisible("table.events"))
	findText := read("find text", chromedp.Text("main"))
	shot("find")
	// Open its dead-lettered event.
	step("open the dead letter", chromedp.Click("tr.row-state-deadlettered a", chromedp.NodeVisible), chromedp.WaitVisible("#body"))
	messageText := read("message text", chromedp.Text("main"))
	shot("message")
	// Replay it: preview first, then confirm.
	step("preview", chromedp.Click("#replay-one", chromedp.NodeVisible), chromedp.WaitVisible("#preview-summary"))
	previewText := read("preview text", chromedp.Text("main"))
	shot("preview")
	step("confirm", chromedp.Click("#confirm", chromedp.NodeVisible), chromedp.WaitVisible("#result-summary"))
	resultText := read("result text", chromedp.Text("#result-summary"))
	// The dead-letter list; its script ticks every box.
	step("dead letters", chromedp.Navigate(srv.URL+"/dlq"), chromedp.WaitVisible("#deadletters"),
		chromedp.Click("input[data-select-all]", chromedp.NodeVisible))
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	allChecked, err := chromedp.Run(sctx, chromedp.Evaluate[bool](`Array.from(document.querySelectorAll('input[name=seq]')).every(b => b.checked)`))
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	shot("deadletters")

	for _, want := range []string{callID, "dead-lettered", "Microsoft.Communication.IncomingCall", "unknown number", "waiting", "Microsoft.Communication.CallConnected"} {
		if !strings.Contains(findText, want) {
			t.Errorf("find page lacks %q:\n%s", want, findText)
		}
	}
	if !strings.Contains(messageText, "evt-incoming") || !strings.Contains(messageText, `"correlationId": "`+callID+`"`) {
		t.Errorf("message page:\n%s", messageText)
	}
	if !strings.Contains(previewText, "1 dead-lettered messages would be replayed") {
		t.Errorf("preview page:\n%s", previewText)
	}
	if !strings.Contains(resultText, "replayed 1 of 1 selected messages") {
		t.Errorf("result: %s", resultText)
	}
	if !allChecked {
		t.Error("select all did not tick every message: the console's script did not run")
	}
	mu.Lock()
	if len(pageErrors) > 0 {
		t.Errorf("page errors: %q", pageErrors)
	}
	mu.Unlock()

	dir := os.Getenv("HOOKBRIDGE_CONSOLE_SCREENSHOTS")
	for name, b := range shots {
		if len(b) == 0 {
			t.Errorf("screenshot %s is empty", name)
			continue
		}
		for _, d := range []string{t.ArtifactDir(), dir} {
			if d == "" {
				continue
			}
			if err := os.WriteFile(filepath.Join(d, "console-"+name+".png"), b, 0o644); err != nil {
				t.Errorf("write screenshot: %v", err)
			}
		}
	}

	// A real worker delivers the replayed event.
	delivered := make(chan string, 16)
	w, err := consumer.New(q, consumer.HandlerFunc(func(_ context.Context, e *schemas.Event) error {
		delivered <- e.ID
		return nil
	}), consumer.Config{Concurrency: 2})
	if err != nil {
		t.Fatal(err)
	}
	stop := testrun.Start(t, w.Run)
	deadline := time.After(30 * time.Second)
	for got := false; !got; {
		select {
		case id := <-delivered:
			got = id == "evt-incoming"
		case <-deadline:
			t.Fatal("the worker did not deliver the replayed IncomingCall within 30s")
		}
	}
	if err := stop(); err != nil && !errors.Is(err, context.Canceled) {
		t.Errorf("worker: %v", err)
	}
	if _, dead := countsOf(t, q); dead != 2 {
		t.Errorf("dead-lettered after the replay: %d, want 2 (of 3)", dead)
	}
}

func countsOf(t *testing.T, q *sqlite.Queue) (int64, int64) {
	t.Helper()
	s, err := q.Summary(context.Background(), relay.SummaryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return s.Active, s.DeadLettered
}
