package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/hookbridge/hookbridge/consumer"
	"github.com/hookbridge/hookbridge/internal/when"
	"github.com/hookbridge/hookbridge/relay"
)

// filterFlags are the dead-letter filters shared by the dlq commands.
type filterFlags struct {
	ids          []string
	typ          string
	reason       string
	partitionKey string
	since, until string
	limit        int
	fs           *pflag.FlagSet
}

func (f *filterFlags) register(fs *pflag.FlagSet) {
	f.fs = fs
	fs.StringSliceVar(&f.ids, "id", nil, "only these message or event IDs (repeatable)")
	fs.StringVar(&f.typ, "type", "", "only events of this type, e.g. Microsoft.Communication.IncomingCall")
	fs.StringVar(&f.reason, "reason", "", "only messages dead-lettered for this reason, e.g. BackendRejected or MaxDeliveryCountExceeded")
	fs.StringVar(&f.partitionKey, "partition-key", "", "only this call's events (the partition key: its correlation ID)")
	fs.StringVar(&f.since, "since", "", "only messages dead-lettered at or after this time (RFC 3339, or a duration ago such as 2h)")
	fs.StringVar(&f.until, "until", "", "only messages dead-lettered before this time (RFC 3339, or a duration ago)")
	fs.IntVar(&f.limit, "limit", 0, "at most this many messages (0: all)")
}

func (f *filterFlags) filter(now time.Time) (consumer.DeadLetterFilter, error) {
	out := consumer.DeadLetterFilter{IDs: f.ids, Type: f.typ, Reason: f.reason, PartitionKey: f.partitionKey, Limit: f.limit}
	// A filter given empty (--id "$ID" with ID unset) would select every
	// dead-lettered message: for purge, delete them all.
	for _, flag := range []struct {
		name  string
		empty bool
	}{
		{"id", len(f.ids) == 0 || slices.Contains(f.ids, "")}, {"type", f.typ == ""},
		{"reason", f.reason == ""}, {"partition-key", f.partitionKey == ""},
	} {
		if name := flag.name; flag.empty && f.fs != nil && f.fs.Changed(name) {
			return out, usageError{fmt.Errorf("--%s is empty, which would select every dead-lettered message; give a value, or leave --%s out to mean all", name, name)}
		}
	}
	var err error
	if out.Since, err = when.Parse(f.since, now, "--since"); err != nil {
		return out, usageError{err}
	}
	if out.Until, err = when.Parse(f.until, now, "--until"); err != nil {
		return out, usageError{err}
	}
	if f.limit < 0 {
		return out, usageError{errors.New("--limit must not be negative")}
	}
	return out, nil
}

func dlqCommand(getenv env) *cobra.Command {
	var (
		queueURL string
		logs     logFlags
	)
	cmd := &cobra.Command{
		Use:   "dlq",
		Short: "Inspect and re-drive the dead-letter queue",
		Long: `Inspect and re-drive the dead-letter queue of the embedded queue or of a
Service Bus queue (its $DeadLetterQueue). Messages land there when the
backend rejected them (BackendRejected, also for a redirect), when they
failed max delivery count times (MaxDeliveryCountExceeded), when a
verified sender's event broke an envelope rule and was stored as received
(MalformedEvent), when they were not events (InvalidMessage), when a Go
handler refused them for good (the reason it gave, else HandlerRejected),
or, in a spool's dead-letter queue, when Service Bus would not take them
(MessageTooLarge).

Exit status of replay and purge: 0 when every selected message was
replayed or purged; 1 on an error, or when a run did less than it
selected (messages gone or taken by someone else, failed and given back,
or replayed but not removed); 2 on a usage error, and for purge without
--yes, which only lists what it would delete.`,
	}
	cmd.PersistentFlags().StringVar(&queueURL, "queue", DefaultQueue, queueHelp)
	logs.register(cmd.PersistentFlags())
	// Without this, a mistyped subcommand (dlq repaly) printed the help
	// and exited 0, as if it had run.
	cmd.RunE = func(c *cobra.Command, args []string) error {
		if len(args) > 0 {
			return usageError{fmt.Errorf("unknown command %q for %q; see %s -h", args[0], c.CommandPath(), c.CommandPath())}
		}
		return c.Help()
	}
	open := func(cmd *cobra.Command) (queue, error) {
		log, err := logs.logger(cmd.ErrOrStderr())
		if err != nil {
			return nil, err
		}
		// A mistyped path would otherwise create an empty queue and report
		// nothing dead-lettered.
		if err := sqliteFileExists(queueURL); err != nil {
			return nil, err
		}
		return openQueue(cmd.Context(), queueURL, getenv, log, 0, nil)
	}
	cmd.AddCommand(dlqListCommand(open), dlqShowCommand(open), dlqReplayCommand(open), dlqPurgeCommand(open))
	return cmd
}

type opener func(*cobra.Command) (queue, error)

// withQueue reads the filter flags, opens the queue and runs fn.
func withQueue(cmd *cobra.Command, open opener, f *filterFlags, fn func(q queue, filter consumer.DeadLetterFilter) error) error {
	filter, err := f.filter(time.Now())
	if err != nil {
		return err
	}
	q, err := open(cmd)
	if err != nil {
		return err
	}
	defer q.Close()
	return fn(q, filter)
}

// dlqRecord is one line of `dlq list --json`.
type dlqRecord struct {
	SequenceNumber   int64      `json:"sequence_number"`
	MessageID        string     `json:"message_id"`
	EventID          string     `json:"event_id"`
	Type             string     `json:"type"`
	PartitionKey     string     `json:"partition_key"`
	Reason           string     `json:"reason"`
	Description      string     `json:"description"`
	DeliveryCount    int        `json:"delivery_count"`
	ReplayCount      int64      `json:"replay_count"`
	EnqueuedTime     time.Time  `json:"enqueued_time"`
	DeadLetteredTime *time.Time `json:"dead_lettered_time,omitempty"`
}

func record(d relay.DeadLetter) dlqRecord {
	r := dlqRecord{SequenceNumber: d.SequenceNumber, MessageID: d.ID, Type: d.Subject, PartitionKey: d.SessionID,
		Reason: d.Reason, Description: d.Description, DeliveryCount: d.DeliveryCount, EnqueuedTime: d.EnqueuedTime.UTC()}
	r.EventID, _ = d.Properties[relay.PropID].(string)
	if t, ok := d.Properties[relay.PropType].(string); ok && r.Type == "" {
		r.Type = t
	}
	r.ReplayCount = relay.ReplayCount(d.Properties)
	if !d.DeadLetteredTime.IsZero() {
		t := d.DeadLetteredTime.UTC()
		r.DeadLetteredTime = &t
	}
	return r
}

func dlqListCommand(open opener) *cobra.Command {
	var (
		f      filterFlags
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List dead-lettered messages",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withQueue(cmd, open, &f, func(q queue, filter consumer.DeadLetterFilter) error {
				return listDeadLetters(cmd, q, filter, asJSON)
			})
		},
	}
	f.register(cmd.Flags())
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON object per line")
	return cmd
}

func listDeadLetters(cmd *cobra.Command, q queue, filter consumer.DeadLetterFilter, asJSON bool) error {
	out := cmd.OutOrStdout()
	if asJSON {
		enc := json.NewEncoder(out)
		return consumer.ListDeadLetters(cmd.Context(), q, filter, func(d relay.DeadLetter) error { return enc.Encode(record(d)) })
	}
	tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SEQ\tMESSAGE ID\tTYPE\tPARTITION KEY\tREASON\tDESCRIPTION\tDELIVERIES\tENQUEUED\tDEAD-LETTERED")
	n := 0
	err := consumer.ListDeadLetters(cmd.Context(), q, filter, func(d relay.DeadLetter) error {
		r := record(d)
		dl := "-"
		if r.DeadLetteredTime != nil {
			dl = r.DeadLetteredTime.Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", r.SequenceNumber, r.MessageID, r.Type, orDash(r.PartitionKey),
			orDash(r.Reason), orDash(clip(r.Description, 60)), r.DeliveryCount, r.EnqueuedTime.Format(time.RFC3339), dl)
		n++
		return nil
	})
	tw.Flush()
	if err == nil {
		fmt.Fprintf(cmd.ErrOrStderr(), "%d dead-lettered messages\n", n)
	}
	return err
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// clip puts s on one line of at most n bytes.
func clip(s string, n int) string {
	return relay.Truncate(strings.Join(strings.Fields(s), " "), n)
}

func dlqShowCommand(open opener) *cobra.Command {
	return &cobra.Command{
		Use:   "show <sequence number | message ID | event ID>",
		Short: "Show one dead-lettered message in full",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			q, err := open(cmd)
			if err != nil {
				return err
			}
			defer q.Close()
			key := args[0]
			seq, numErr := strconv.ParseInt(key, 10, 64)
			var found *relay.DeadLetter
			errFound := errors.New("found")
			err = consumer.ListDeadLetters(cmd.Context(), q, consumer.DeadLetterFilter{}, func(d relay.DeadLetter) error {
				eventID, _ := d.Properties[relay.PropID].(string)
				if (numErr == nil && d.SequenceNumber == seq) || d.ID == key || eventID == key {
					found = &d
					return errFound
				}
				return nil
			})
			if err != nil && !errors.Is(err, errFound) {
				return err
			}
			if found == nil {
				return fmt.Errorf("no dead-lettered message %q; see hookbridge dlq list", key)
			}
			return showDeadLetter(cmd.OutOrStdout(), *found)
		},
	}
}

func showDeadLetter(w io.Writer, d relay.DeadLetter) error {
	r := record(d)
	head, _ := json.MarshalIndent(struct {
		dlqRecord
		ContentType string         `json:"content_type"`
		Properties  map[string]any `json:"application_properties"`
	}{r, d.ContentType, d.Properties}, "", "  ")
	fmt.Fprintf(w, "%s\n\nbody:\n", head)
	var pretty bytes.Buffer
	if json.Indent(&pretty, d.Body, "", "  ") == nil {
		pretty.WriteTo(w)
	} else {
		w.Write(d.Body)
	}
	fmt.Fprintln(w)
	return nil
}

// progress renders a progress bar on a terminal, nothing elsewhere.
func progress(w io.Writer, verb string) func(done, total int) {
	f, ok := w.(*os.File)
	if !ok {
		return nil
	}
	if fi, err := f.Stat(); err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		return nil
	}
	return func(done, total int) {
		const width = 30
		filled := width * done / max(total, 1)
		fmt.Fprintf(w, "\r%s [%s%s] %d/%d", verb, strings.Repeat("#", filled), strings.Repeat(".", width-filled), done, total)
		if done == total {
			fmt.Fprintln(w)
		}
	}
}

func dlqReplayCommand(open opener) *cobra.Command {
	var (
		f      filterFlags
		dryRun bool
	)
	cmd := &cobra.Command{
		Use:   "replay",
		Short: "Re-send dead-lettered messages to the queue",
		Long: `Re-send the dead-lettered messages that match the filters to the main queue,
in order. Each copy keeps the CloudEvent (id included) and its call's
session, gets a new message ID (so duplicate detection does not drop it)
and a replay count. The dead-lettered message is removed only after the
copy was accepted: an interruption can leave a duplicate, never a loss.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withQueue(cmd, open, &f, func(q queue, filter consumer.DeadLetterFilter) error {
				res, err := consumer.Replay(cmd.Context(), q, filter, consumer.ReplayOptions{DryRun: dryRun, Progress: progress(cmd.ErrOrStderr(), "replaying")})
				return summarize(cmd, res, err, dryRun, "replayed", "would replay")
			})
		},
	}
	f.register(cmd.Flags())
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "list what would be replayed and change nothing")
	return cmd
}

func dlqPurgeCommand(open opener) *cobra.Command {
	var (
		f   filterFlags
		yes bool
	)
	cmd := &cobra.Command{
		Use:   "purge --yes",
		Short: "Delete dead-lettered messages for good",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withQueue(cmd, open, &f, func(q queue, filter consumer.DeadLetterFilter) error {
				res, err := consumer.Purge(cmd.Context(), q, filter, consumer.ReplayOptions{DryRun: !yes, Progress: progress(cmd.ErrOrStderr(), "purging")})
				if err == nil && !yes {
					for _, d := range res.Selected {
						fmt.Fprintf(cmd.OutOrStdout(), "%d\t%s\t%s\n", d.SequenceNumber, d.ID, d.Reason)
					}
					return usageError{fmt.Errorf("purge deletes %d dead-lettered messages for good; run it again with --yes to do it", len(res.Selected))}
				}
				return summarize(cmd, res, err, false, "purged", "")
			})
		},
	}
	f.register(cmd.Flags())
	cmd.Flags().BoolVar(&yes, "yes", false, "confirm: delete the selected messages for good")
	return cmd
}

// summarize prints what a replay or purge did, and turns a run that did
// less than it selected into an error (exit status 1).
func summarize(cmd *cobra.Command, res consumer.ReplayResult, err error, dryRun bool, done, would string) error {
	out := cmd.OutOrStdout()
	if dryRun {
		for _, d := range res.Selected {
			r := record(d)
			fmt.Fprintf(out, "%d\t%s\t%s\t%s\n", r.SequenceNumber, r.MessageID, r.Type, r.Reason)
		}
		fmt.Fprintf(cmd.ErrOrStderr(), "dry run: %s %d messages\n", would, len(res.Selected)-res.Unreplayable)
		if res.Unreplayable > 0 {
			fmt.Fprintf(cmd.ErrOrStderr(), "%d of them are %s and would be left in the dead-letter queue: their body is what the sender posted, not an event a worker can deliver\n",
				res.Unreplayable, relay.ReasonMalformedEvent)
		}
		return err
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "%s %d of %d selected messages", done, res.Done, len(res.Selected))
	if res.Vanished > 0 {
		fmt.Fprintf(cmd.ErrOrStderr(), "; %d were gone or taken by someone else", res.Vanished)
	}
	if res.Failed > 0 {
		fmt.Fprintf(cmd.ErrOrStderr(), "; %d failed and were given back", res.Failed)
	}
	if res.Duplicated > 0 {
		fmt.Fprintf(cmd.ErrOrStderr(), "; %d are in the queue and still in the dead-letter queue (remove them with purge --id)", res.Duplicated)
	}
	if res.Unreplayable > 0 {
		fmt.Fprintf(cmd.ErrOrStderr(), "; %d are %s and were left in the dead-letter queue", res.Unreplayable, relay.ReasonMalformedEvent)
	}
	fmt.Fprintln(cmd.ErrOrStderr())
	if err == nil && res.Incomplete() {
		err = fmt.Errorf("%s %d of %d selected messages: see hookbridge dlq list for what is left; a message another run holds is free again after the queue's lock duration", done, res.Done, len(res.Selected))
	}
	return err
}
