// Command hookbridge is the public front door for Azure Communication
// Services events: `hookbridge ingress` verifies and queues them, `hookbridge
// worker` delivers them to a private backend, and `hookbridge dev` runs both
// with a local token issuer. Run `hookbridge -h` for every command and
// setting.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

func main() {
	tuneGC(os.LookupEnv)
	ctx, cancel := context.WithCancelCause(context.Background())
	// The first SIGINT or SIGTERM starts a graceful shutdown; a second one
	// ends the process at once, by the signal's default action. The channel
	// holds both, so a second signal sent the moment after the first is
	// never missed.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		sig := <-sigs
		cancel(fmt.Errorf("%v signal received", sig))
		sig = <-sigs
		signal.Reset(os.Interrupt, syscall.SIGTERM)
		if p, err := os.FindProcess(os.Getpid()); err == nil && p.Signal(sig) == nil {
			time.Sleep(time.Second) // the default action ends the process meanwhile
		}
		os.Exit(1)
	}()
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdin, os.Stdout, os.Stderr)
	cancel(nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, "hookbridge:", err)
		var ue usageError
		if errors.As(err, &ue) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// usageError is a mistake in the command line or environment; it exits 2.
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

// env is the process environment, injected so tests can set it.
type env func(string) string

// run builds the command tree and executes it.
func run(ctx context.Context, args []string, getenv env, stdin io.Reader, stdout, stderr io.Writer) error {
	root := &cobra.Command{
		Use:   "hookbridge",
		Short: "Verified, durable front door for Azure Communication Services events",
		Long: `hookbridge verifies every webhook that Azure Communication Services sends
(Call Automation callbacks and Event Grid deliveries), queues each event
durably, and delivers it to your private backend, in order per call.

Every flag --some-name can also be set as the environment variable
HOOKBRIDGE_SOME_NAME; a flag on the command line wins. The exception is
dlq purge --yes, which counts only on the command line.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(
		ingressCommand(getenv),
		workerCommand(getenv),
		devCommand(getenv),
		callbackURLCommand(getenv),
		dlqCommand(getenv),
		consoleCommand(getenv),
		versionCommand(),
	)
	for _, c := range root.Commands() {
		annotateEnv(c)
	}
	prepare(root, getenv)
	err := root.ExecuteContext(ctx)
	if err != nil && strings.HasPrefix(err.Error(), "unknown command ") {
		err = usageError{err} // cobra's own, for a mistyped command
	}
	return err
}

// prepare makes every command of the tree fill its flags from the
// environment before it runs (inside its own RunE, so no hook a command
// sets can skip it) and report a wrong positional argument as a usage
// error.
func prepare(cmd *cobra.Command, getenv env) {
	if run := cmd.RunE; run != nil {
		cmd.RunE = func(c *cobra.Command, args []string) error {
			if err := bindEnv(c, getenv); err != nil {
				return err
			}
			return run(c, args)
		}
	}
	if args := cmd.Args; args != nil {
		cmd.Args = func(c *cobra.Command, a []string) error {
			if err := args(c, a); err != nil {
				return usageError{fmt.Errorf("%w; see %s -h", err, c.CommandPath())}
			}
			return nil
		}
	}
	for _, c := range cmd.Commands() {
		prepare(c, getenv)
	}
}

// envName maps a flag name to its environment variable.
func envName(flag string) string {
	return "HOOKBRIDGE_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// noEnv are the flags only the command line sets: a confirmation that
// counted from the environment would confirm every run.
var noEnv = map[string]bool{"help": true, "yes": true}

// annotateEnv appends each flag's environment variable to its help text.
func annotateEnv(cmd *cobra.Command) {
	annotate := func(f *pflag.Flag) {
		if tag := " [$" + envName(f.Name) + "]"; !noEnv[f.Name] && !strings.Contains(f.Usage, tag) {
			f.Usage += tag
		}
	}
	cmd.Flags().VisitAll(annotate)
	cmd.PersistentFlags().VisitAll(annotate)
	for _, c := range cmd.Commands() {
		annotateEnv(c)
	}
}

// bindEnv fills every flag not given on the command line from its
// environment variable.
func bindEnv(cmd *cobra.Command, getenv env) error {
	var err error
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if err != nil || f.Changed || noEnv[f.Name] {
			return
		}
		name := envName(f.Name)
		v := getenv(name)
		if v == "" {
			return
		}
		if serr := cmd.Flags().Set(f.Name, v); serr != nil {
			err = usageError{fmt.Errorf("environment variable %s=%q: %w", name, v, serr)}
		}
	})
	return err
}

// secret reads a secret from the environment variable name, or from the file
// named by name_FILE. Secrets never come from the command line.
func secret(getenv env, name string) (string, error) {
	v := getenv(name)
	path := getenv(name + "_FILE")
	switch {
	case v != "" && path != "":
		return "", usageError{fmt.Errorf("both %s and %s_FILE are set; set one", name, name)}
	case path != "":
		b, err := readSecretFile(path)
		if err != nil {
			return "", fmt.Errorf("read %s_FILE: %w", name, err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	return v, nil
}

// commonFlags are the settings every long-running command has: the queue,
// the private admin listener and logging.
type commonFlags struct {
	queueURL      string
	adminListen   string
	traceEndpoint string
	logs          logFlags
}

func (c *commonFlags) register(fs *pflag.FlagSet, defaultAdmin string) {
	c.logs.register(fs)
	fs.StringVar(&c.queueURL, "queue", DefaultQueue, queueHelp)
	fs.StringVar(&c.adminListen, "admin-listen", defaultAdmin, "private admin listener (/healthz, /readyz, /metrics); never expose it")
	fs.StringVar(&c.traceEndpoint, "trace-endpoint", "", traceEndpointHelp)
}

// host returns the command's host, logging where the command writes
// errors, with tracing when the environment or --trace-endpoint turns it
// on (spans named for service unless the environment names it).
func (c *commonFlags) host(cmd *cobra.Command, getenv env, service string) (*host, error) {
	log, err := c.logs.logger(cmd.ErrOrStderr())
	if err != nil {
		return nil, err
	}
	h := newHost(log)
	if err := h.addTracing(cmd.Context(), getenv, c.traceEndpoint, service); err != nil {
		return nil, err
	}
	return h, nil
}

// openQueue opens --queue, its instruments registered with h.
func (c *commonFlags) openQueue(ctx context.Context, getenv env, h *host, sessions int) (queue, error) {
	return openQueue(ctx, c.queueURL, getenv, h.log, sessions, h.reg)
}

// logFlags are the logging settings shared by every long-running command.
type logFlags struct {
	level  string
	format string
}

func (l *logFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&l.level, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&l.format, "log-format", "text", "log format: text or json")
}

func (l *logFlags) logger(w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(l.level)); err != nil {
		return nil, usageError{fmt.Errorf("--log-level %q: use debug, info, warn or error", l.level)}
	}
	opts := &slog.HandlerOptions{Level: level}
	switch l.format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	default:
		return nil, usageError{fmt.Errorf("--log-format %q: use text or json", l.format)}
	}
}

// maxSecretFile bounds a secret file: keys and tokens are short, and a
// variable pointing at the wrong file (a log, /dev/zero) must not fill the
// memory.
const maxSecretFile = 1 << 20

// readSecretFile reads a secret file of at most maxSecretFile bytes.
func readSecretFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxSecretFile+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxSecretFile {
		return nil, usageError{fmt.Errorf("%s is larger than %d bytes, too large for a file of keys or tokens; is it the right file?", path, maxSecretFile)}
	}
	return b, nil
}
