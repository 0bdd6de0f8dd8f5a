package console

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hookbridge/hookbridge/consumer"
	"github.com/hookbridge/hookbridge/internal/when"
	"github.com/hookbridge/hookbridge/relay"
)

// Bounds of what one page reads or one action does.
const (
	// dlqScan is how many dead-lettered messages the overview's breakdown
	// by reason and type reads.
	dlqScan = 5000
	// maxList is the most dead-lettered messages one list page shows.
	maxList = 1000
	// defaultList is how many it shows unless a limit is given.
	defaultList = 100
	// maxAction is the most messages one replay or purge from the console
	// acts on; hookbridge dlq has no such bound.
	maxAction = 1000
	// maxCalls is how many calls a find follows from the IDs it matched.
	maxCalls = 5
	// actionTimeout bounds a replay or purge, which finishes even if the
	// browser goes away.
	actionTimeout = 2 * time.Minute
	// pageTimeout bounds what a page reads.
	pageTimeout = 30 * time.Second
)

type count struct {
	Key string
	N   int
}

func sortedCounts(m map[string]int) []count {
	out := make([]count, 0, len(m))
	for k, n := range m {
		out = append(out, count{k, n})
	}
	slices.SortFunc(out, func(a, b count) int { return cmp.Or(cmp.Compare(b.N, a.N), cmp.Compare(a.Key, b.Key)) })
	return out
}

type overviewData struct {
	Summary    relay.QueueSummary
	SummaryErr string

	Spool      *relay.QueueSummary
	SpoolName  string
	SpoolErr   string
	HasSpool   bool
	DLQ        dlqBreakdown
	Metrics    []SourceRates
	HasMetrics bool
}

type dlqBreakdown struct {
	Read      int
	Truncated bool
	Oldest    time.Time
	ByReason  []count
	ByType    []count
	Err       string
}

func (s *Server) overview(w http.ResponseWriter, r *request) error {
	ctx, cancel := context.WithTimeout(r.Context(), pageTimeout)
	defer cancel()
	var d overviewData
	var err error
	if d.Summary, err = s.cfg.Queue.Summary(ctx, relay.SummaryOptions{}); err != nil {
		d.SummaryErr = err.Error()
	}
	if s.cfg.Spool != nil {
		d.HasSpool, d.SpoolName = true, s.cfg.SpoolName
		sp, err := s.cfg.Spool.Summary(ctx, relay.SummaryOptions{Sessions: 10})
		if err != nil {
			d.SpoolErr = err.Error()
		} else {
			d.Spool = &sp
		}
	}
	d.DLQ = s.breakdown(ctx)
	if s.scraper != nil {
		d.HasMetrics, d.Metrics = true, s.scraper.rates()
	}
	s.render(w, r, http.StatusOK, "overview", "Overview", d)
	return nil
}

// breakdown reads up to dlqScan dead-lettered messages and counts them by
// reason and by type.
func (s *Server) breakdown(ctx context.Context) dlqBreakdown {
	var b dlqBreakdown
	reasons, types := map[string]int{}, map[string]int{}
	err := consumer.ListDeadLetters(ctx, s.cfg.Queue, consumer.DeadLetterFilter{Limit: dlqScan + 1}, func(d relay.DeadLetter) error {
		if b.Read == dlqScan {
			b.Truncated = true
			return nil
		}
		b.Read++
		reasons[cmp.Or(d.Reason, "(none)")]++
		m := relay.FromDeadLetter(d)
		types[cmp.Or(m.Type(), "(none)")]++
		at := cmp.Or(d.DeadLetteredTime, d.EnqueuedTime)
		if b.Oldest.IsZero() || at.Before(b.Oldest) {
			b.Oldest = at
		}
		return nil
	})
	if err != nil {
		b.Err = err.Error()
	}
	b.ByReason, b.ByType = sortedCounts(reasons), sortedCounts(types)
	return b
}

type call struct {
	Key      string
	Messages []relay.BrowsedMessage
}

type findData struct {
	Query     string
	Calls     []call
	Truncated bool
	Notes     []string
	Searched  bool
}

// find looks a query up as an event ID, a message ID and a partition key,
// then shows each call it found whole: its events in order, in the queue
// and in the dead-letter queue.
func (s *Server) find(w http.ResponseWriter, r *request) error {
	ctx, cancel := context.WithTimeout(r.Context(), pageTimeout)
	defer cancel()
	d := findData{Query: strings.TrimSpace(r.URL.Query().Get("q"))}
	if d.Query == "" {
		s.render(w, r, http.StatusOK, "find", "Find", d)
		return nil
	}
	if len(d.Query) > 1024 {
		return errorf(http.StatusBadRequest, "The search is %d characters long; IDs and partition keys are at most a few hundred.", len(d.Query))
	}
	d.Searched = true
	res, err := s.cfg.Queue.Find(ctx, relay.FindQuery{ID: d.Query, PartitionKey: d.Query})
	if err != nil {
		return err
	}
	found := res.Messages
	d.Truncated, d.Notes = res.Truncated, res.Notes
	// An ID found in a call: show the whole call.
	var keys []string
	for _, m := range found {
		if m.SessionID != "" && m.SessionID != d.Query && !slices.Contains(keys, m.SessionID) && len(keys) < maxCalls {
			keys = append(keys, m.SessionID)
		}
	}
	for _, k := range keys {
		more, err := s.cfg.Queue.Find(ctx, relay.FindQuery{PartitionKey: k})
		if err != nil {
			return err
		}
		found = append(found, more.Messages...)
		d.Truncated = d.Truncated || more.Truncated
		for _, n := range more.Notes {
			if !slices.Contains(d.Notes, n) {
				d.Notes = append(d.Notes, n)
			}
		}
	}
	// De-duplicate and order: enqueue time, then sequence number.
	type key struct {
		dead bool
		seq  int64
	}
	seen := map[key]bool{}
	byCall := map[string]int{}
	slices.SortStableFunc(found, func(a, b relay.BrowsedMessage) int {
		return cmp.Or(a.EnqueuedTime.Compare(b.EnqueuedTime), cmp.Compare(a.SequenceNumber, b.SequenceNumber))
	})
	for _, m := range found {
		k := key{m.State == relay.StateDeadLettered, m.SequenceNumber}
		if seen[k] {
			continue
		}
		seen[k] = true
		i, ok := byCall[m.SessionID]
		if !ok {
			i = len(d.Calls)
			byCall[m.SessionID] = i
			d.Calls = append(d.Calls, call{Key: m.SessionID})
		}
		d.Calls[i].Messages = append(d.Calls[i].Messages, m)
	}
	s.render(w, r, http.StatusOK, "find", "Find "+d.Query, d)
	return nil
}

// filterForm is the dead-letter filter as the forms carry it.
type filterForm struct {
	ID, Type, Reason, PartitionKey, Since, Until, Limit string
}

func readFilterForm(v url.Values) filterForm {
	get := func(k string) string { return strings.TrimSpace(v.Get(k)) }
	return filterForm{ID: get("id"), Type: get("type"), Reason: get("reason"), PartitionKey: get("partition_key"),
		Since: get("since"), Until: get("until"), Limit: get("limit")}
}

// Values is the filter as query or form values, empty fields left out.
func (f filterForm) Values() url.Values {
	v := url.Values{}
	for k, s := range map[string]string{"id": f.ID, "type": f.Type, "reason": f.Reason, "partition_key": f.PartitionKey,
		"since": f.Since, "until": f.Until, "limit": f.Limit} {
		if s != "" {
			v.Set(k, s)
		}
	}
	return v
}

// Fields lists the filter's set fields, for hidden form inputs.
func (f filterForm) Fields() []prop {
	var out []prop
	for k, vs := range f.Values() {
		out = append(out, prop{k, vs[0]})
	}
	slices.SortFunc(out, func(a, b prop) int { return cmp.Compare(a.Name, b.Name) })
	return out
}

func (f filterForm) Empty() bool { return len(f.Values()) == 0 }

// filter turns the form into a consumer.DeadLetterFilter, with the same
// rules as hookbridge dlq's flags; limit 0 is replaced by def, and limits
// above most are refused.
func (f filterForm) filter(now time.Time, def, most int) (consumer.DeadLetterFilter, error) {
	out := consumer.DeadLetterFilter{Type: f.Type, Reason: f.Reason, PartitionKey: f.PartitionKey, Limit: def}
	for _, id := range strings.Split(f.ID, ",") {
		if id = strings.TrimSpace(id); id != "" {
			out.IDs = append(out.IDs, id)
		}
	}
	var err error
	if out.Since, err = when.Parse(f.Since, now, "since"); err != nil {
		return out, err
	}
	if out.Until, err = when.Parse(f.Until, now, "until"); err != nil {
		return out, err
	}
	if f.Limit != "" {
		n, err := strconv.Atoi(f.Limit)
		if err != nil || n < 0 || n > most {
			return out, fmt.Errorf("limit %q: give a number from 0 to %d (0: the default, %d)", f.Limit, most, def)
		}
		if n > 0 {
			out.Limit = n
		}
	}
	return out, nil
}

type dlqData struct {
	Filter    filterForm
	Err       string
	Messages  []relay.BrowsedMessage
	Limit     int
	Truncated bool
}

func (s *Server) deadLetters(w http.ResponseWriter, r *request) error {
	ctx, cancel := context.WithTimeout(r.Context(), pageTimeout)
	defer cancel()
	d := dlqData{Filter: readFilterForm(r.URL.Query())}
	f, err := d.Filter.filter(s.now(), defaultList, maxList)
	if err != nil {
		d.Err = err.Error()
		s.render(w, r, http.StatusBadRequest, "dlq", "Dead letters", d)
		return nil
	}
	d.Limit = f.Limit
	f.Limit++ // one more, to tell there are more
	err = consumer.ListDeadLetters(ctx, s.cfg.Queue, f, func(dl relay.DeadLetter) error {
		d.Messages = append(d.Messages, relay.FromDeadLetter(dl))
		return nil
	})
	if err != nil {
		return err
	}
	if len(d.Messages) > d.Limit {
		d.Messages, d.Truncated = d.Messages[:d.Limit], true
	}
	s.render(w, r, http.StatusOK, "dlq", "Dead letters", d)
	return nil
}

type messageData struct {
	M relay.BrowsedMessage
}

func (s *Server) deadLetter(w http.ResponseWriter, r *request) error {
	return s.showMessage(w, r, true)
}

func (s *Server) message(w http.ResponseWriter, r *request) error {
	return s.showMessage(w, r, false)
}

func (s *Server) showMessage(w http.ResponseWriter, r *request, dead bool) error {
	ctx, cancel := context.WithTimeout(r.Context(), pageTimeout)
	defer cancel()
	seq, err := strconv.ParseInt(r.PathValue("seq"), 10, 64)
	if err != nil || seq < 0 {
		return errorf(http.StatusNotFound, "%q is not a sequence number.", r.PathValue("seq"))
	}
	m, err := s.cfg.Queue.Peek(ctx, relay.MessageRef{DeadLettered: dead, SequenceNumber: seq, SessionID: r.URL.Query().Get("session")})
	if errors.Is(err, relay.ErrNotFound) {
		where := "in the queue: it may have been delivered or dead-lettered since"
		if dead {
			where = "in the dead-letter queue: it may have been replayed or purged since"
		}
		return errorf(http.StatusNotFound, "Message %d is not %s. Find its call to see where it is now.", seq, where)
	}
	if err != nil {
		return err
	}
	s.render(w, r, http.StatusOK, "message", fmt.Sprintf("Message %d", seq), messageData{M: m})
	return nil
}

// onlySeqs restricts a dead-letter queue's listing to given sequence
// numbers, so that consumer.Replay and Purge act on exactly the messages an
// operator selected or previewed, with their guarantees.
type onlySeqs struct {
	consumer.DeadLetterQueue
	seqs map[int64]bool
	last int64
}

func restrict(q consumer.DeadLetterQueue, seqs []int64) consumer.DeadLetterQueue {
	if seqs == nil {
		return q
	}
	o := onlySeqs{DeadLetterQueue: q, seqs: map[int64]bool{}}
	for _, s := range seqs {
		o.seqs[s] = true
		o.last = max(o.last, s)
	}
	return o
}

func (o onlySeqs) ListDeadLetters(ctx context.Context, after int64, limit int) ([]relay.DeadLetter, error) {
	for after < o.last {
		page, err := o.DeadLetterQueue.ListDeadLetters(ctx, after, limit)
		if err != nil || len(page) == 0 {
			return nil, err
		}
		var out []relay.DeadLetter
		for _, d := range page {
			after = max(after, d.SequenceNumber)
			if o.seqs[d.SequenceNumber] {
				out = append(out, d)
			}
		}
		if len(out) > 0 {
			return out, nil
		}
	}
	return nil, nil
}

type actionData struct {
	Verb     string // "replay" or "purge"
	Filter   filterForm
	Scope    string
	Selected []relay.BrowsedMessage
	// More says more messages may match than one action takes.
	More    bool
	Error   string
	Result  consumer.ReplayResult
	Elapsed time.Duration
}

// browsedOf is dead letters as the pages list them.
func browsedOf(dls []relay.DeadLetter) []relay.BrowsedMessage {
	var out []relay.BrowsedMessage
	for _, dl := range dls {
		out = append(out, relay.FromDeadLetter(dl))
	}
	return out
}

// past is the verb's past participle, for logs and pages.
// seqList is the sequence numbers an action was confirmed for, for its log
// line: the first 50, then how many more.
func seqList(seqs []int64) string {
	var b strings.Builder
	for i, n := range seqs {
		if i == 50 {
			fmt.Fprintf(&b, " and %d more", len(seqs)-i)
			break
		}
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.FormatInt(n, 10))
	}
	return b.String()
}

func past(verb string) string {
	if verb == "purge" {
		return "purged"
	}
	return "replayed"
}

func (s *Server) replay(w http.ResponseWriter, r *request) error { return s.act(w, r, "replay") }
func (s *Server) purge(w http.ResponseWriter, r *request) error  { return s.act(w, r, "purge") }

// act previews a replay or purge (step "preview", a dry run), then does it
// on exactly the previewed messages that still match (step "confirm"). A
// purge is confirmed by typing how many messages it deletes.
func (s *Server) act(w http.ResponseWriter, r *request, verb string) error {
	form := r.PostForm
	d := actionData{Verb: verb, Filter: readFilterForm(form), Scope: form.Get("scope")}
	var seqs []int64
	for _, v := range form["seq"] {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return errorf(http.StatusBadRequest, "Sequence number %q is not a number.", v)
		}
		seqs = append(seqs, n)
	}
	if len(seqs) > maxAction {
		return errorf(http.StatusBadRequest, "%d messages selected; the console acts on at most %d at once (hookbridge dlq has no limit).", len(seqs), maxAction)
	}
	f, err := d.Filter.filter(s.now(), maxAction, maxAction)
	if err != nil {
		return errorf(http.StatusBadRequest, "%v", err)
	}
	confirm := form.Get("step") == "confirm"
	switch {
	case !confirm && d.Scope == "selected" && len(seqs) == 0:
		return errorf(http.StatusBadRequest, "No message selected: tick the messages to %s, or use the buttons that act on every match of the filter.", verb)
	case !confirm && d.Scope != "selected":
		seqs = nil // the whole filter
	case confirm && len(seqs) == 0:
		return errorf(http.StatusBadRequest, "Nothing to %s: the preview selected no message.", verb)
	}
	run := consumer.Replay
	if verb == "purge" {
		run = consumer.Purge
	}
	// preview selects what the action would act on now, without acting.
	preview := func() (consumer.ReplayResult, error) {
		ctx, cancel := context.WithTimeout(r.Context(), pageTimeout)
		defer cancel()
		res, err := run(ctx, restrict(s.cfg.Queue, seqs), f, consumer.ReplayOptions{DryRun: true})
		if err == nil {
			d.Selected = browsedOf(res.Selected)
		}
		return res, err
	}

	if !confirm {
		res, err := preview()
		if err != nil {
			return err
		}
		d.More = seqs == nil && len(res.Selected) == f.Limit
		s.log.Info("console: "+verb+" previewed", append(r.who(), "selected", len(res.Selected), "filter", d.Filter.Values().Encode())...)
		s.render(w, r, http.StatusOK, "preview", strings.ToUpper(verb[:1])+verb[1:]+" preview", d)
		return nil
	}

	if verb == "purge" && strings.TrimSpace(form.Get("confirm_count")) != strconv.Itoa(len(seqs)) {
		// Show the preview again, asking for the count.
		if _, err := preview(); err != nil {
			return err
		}
		d.Error = fmt.Sprintf("To delete these messages for good, type their number, %d, in the box.", len(d.Selected))
		s.render(w, r, http.StatusBadRequest, "preview", "Purge preview", d)
		return nil
	}
	// The action finishes even if the browser goes away: a replay cut
	// short is safe, but finished is better. A shutdown stops it at its
	// next chunk (see StopActions).
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), actionTimeout)
	defer cancel()
	defer context.AfterFunc(s.stopping, cancel)()
	f.Limit = 0
	start := s.now()
	res, err := run(ctx, restrict(s.cfg.Queue, seqs), f, consumer.ReplayOptions{})
	d.Result, d.Elapsed = res, s.now().Sub(start)
	d.Selected = browsedOf(res.Selected)
	attrs := append(r.who(), "confirmed", len(seqs), "selected", len(res.Selected), "done", res.Done,
		"vanished", res.Vanished, "failed", res.Failed, "duplicated", res.Duplicated, "filter", d.Filter.Values().Encode(),
		"sequence_numbers", seqList(seqs))
	short := len(res.Selected) < len(seqs) || res.Incomplete()
	switch {
	case err != nil && s.stopping.Err() != nil && res.Duplicated == 0:
		d.Error = fmt.Sprintf("The console is shutting down, so the %s stopped: %v. Nothing was both %s and left in the dead-letter queue; look at it again for what is left.", verb, err, past(verb))
		s.log.Warn("console: "+verb+" stopped by shutdown", append(attrs, "error", err)...)
	case err != nil:
		d.Error = err.Error()
		s.log.Error("console: "+verb+" failed", append(attrs, "error", err)...)
	case short:
		// As the command line exits 1: less was done than was confirmed.
		d.Error = fmt.Sprintf("%s %d of the %d messages you confirmed: the others were gone by then, taken by someone else, or failed and were given back. Look at the dead-letter queue again for what is left; a message another run holds is free again after the queue's lock duration.",
			strings.ToUpper(verb[:1])+past(verb)[1:], res.Done, len(seqs))
		s.log.Warn("console: dead letters "+past(verb)+", fewer than confirmed", attrs...)
	default:
		s.log.Info("console: dead letters "+past(verb), attrs...)
	}
	status := http.StatusOK
	if err != nil {
		status = http.StatusInternalServerError
	}
	s.render(w, r, status, "result", strings.ToUpper(verb[:1])+verb[1:]+" done", d)
	return nil
}
