package console

import (
	"bytes"
	"encoding/json"
	"fmt"
	"html/template"
	"math"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hookbridge/hookbridge/relay"
)

// pages are the parsed templates, one per page, each with the layout.
type pages map[string]*template.Template

var pageNames = []string{"overview", "find", "dlq", "message", "preview", "result", "login", "error"}

func parsePages() (pages, error) {
	p := pages{}
	for _, name := range pageNames {
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/"+name+".html")
		if err != nil {
			return nil, fmt.Errorf("console: template %s: %w", name, err)
		}
		p[name] = t
	}
	return p, nil
}

// view is what every page's template gets.
type view struct {
	Title        string
	Page         string
	QueueName    string
	CSRF         string
	Identity     string
	AuthRequired bool
	Now          time.Time
	Data         any
}

func (s *Server) render(w http.ResponseWriter, r *request, status int, page, title string, data any) {
	v := view{
		Title: title, Page: page, QueueName: s.cfg.QueueName, CSRF: s.auth.csrfToken(r.sid),
		Identity: r.identity, AuthRequired: s.auth.required(), Now: s.now(), Data: data,
	}
	var buf bytes.Buffer
	if err := s.pages[page].Execute(&buf, v); err != nil {
		s.log.Error("console: render page", "page", page, "error", err)
		http.Error(w, "The page could not be rendered; see the console's log.", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	buf.WriteTo(w)
}

var funcs = template.FuncMap{
	"ts":         formatTime,
	"ago":        ago,
	"until":      until,
	"clip":       clip,
	"pretty":     prettyBody,
	"num":        formatNum,
	"rate":       formatRate,
	"seconds":    formatSeconds,
	"stateClass": func(s relay.MessageState) string { return "state-" + strings.ReplaceAll(string(s), "-", "") },
	"findURL":    func(q string) string { return "/find?q=" + url.QueryEscape(q) },
	"dlqURL": func(key, value string) string {
		return "/dlq?" + url.Values{key: {value}}.Encode()
	},
	// filterURL is the dead-letter list with a filter's values. Built
	// whole here: html/template escapes a query written after "?" in an
	// attribute as a single value, "=" and "&" included.
	"filterURL":  func(v url.Values) string { return "/dlq?" + v.Encode() },
	"messageURL": messageURL,
	"props":      sortedProps,
	"join":       strings.Join,
	"past":       past,
	"dead":       func(s relay.MessageState) bool { return s == relay.StateDeadLettered },
}

func messageURL(m relay.BrowsedMessage) string {
	if m.State == relay.StateDeadLettered {
		return "/dlq/" + strconv.FormatInt(m.SequenceNumber, 10)
	}
	u := "/messages/" + strconv.FormatInt(m.SequenceNumber, 10)
	if m.SessionID != "" {
		u += "?" + url.Values{"session": {m.SessionID}}.Encode()
	}
	return u
}

func formatTime(t time.Time) string {
	if t.IsZero() {
		return "—"
	}
	return t.UTC().Format("2006-01-02 15:04:05Z")
}

// ago says how long before now t was, roughly.
func ago(now, t time.Time) string {
	if t.IsZero() {
		return "—"
	}
	return roughly(now.Sub(t)) + " ago"
}

func until(now, t time.Time) string {
	if t.IsZero() {
		return "—"
	}
	if d := t.Sub(now); d > 0 {
		return "in " + roughly(d)
	}
	return "now"
}

func roughly(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm %ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh %dm", int(d.Hours()), int(d.Minutes())%60)
	default:
		return fmt.Sprintf("%dd %dh", int(d.Hours())/24, int(d.Hours())%24)
	}
}

// clip puts s on one line of at most n characters.
func clip(n int, s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}

// prettyBody indents a JSON body; anything else is shown as it is (as
// text: the template escapes it).
func prettyBody(b []byte) string {
	var out bytes.Buffer
	if json.Indent(&out, b, "", "  ") == nil {
		return out.String()
	}
	return string(b)
}

func formatNum(n int64) string {
	if n < 0 {
		return "unknown"
	}
	s := strconv.FormatInt(n, 10)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

func formatRate(v float64) string {
	if math.IsNaN(v) {
		return "…"
	}
	return strconv.FormatFloat(v, 'f', 2, 64) + "/s"
}

func formatSeconds(v float64) string {
	switch {
	case math.IsNaN(v):
		return "—"
	case v < 1:
		return strconv.FormatFloat(v*1000, 'f', 1, 64) + " ms"
	default:
		return strconv.FormatFloat(v, 'f', 2, 64) + " s"
	}
}

type prop struct {
	Name  string
	Value string
}

func sortedProps(p map[string]any) []prop {
	out := make([]prop, 0, len(p))
	for k, v := range p {
		out = append(out, prop{k, fmt.Sprint(v)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
