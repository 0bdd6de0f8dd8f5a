// Command sbemu runs hookbridge's Service Bus emulator: an AMQP 1.0 server
// that the azservicebus SDK (and other AMQP Service Bus clients) can use
// for fast local tests. It reads the Config.json format of Microsoft's
// Service Bus emulator. It is a test server, not a broker to deploy:
// messages live in memory.
//
//	sbemu --listen 127.0.0.1:5672 --config deploy/servicebus/Config.json
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/hookbridge/hookbridge/internal/sbemu"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "sbemu:", err)
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		os.Exit(2)
	}
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("sbemu", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:5672", "address to listen on (AMQP, plain TCP)")
	config := fs.String("config", "", "Config.json in the format of Microsoft's Service Bus emulator (required)")
	verbose := fs.Bool("verbose", false, "log protocol errors")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: sbemu --listen 127.0.0.1:5672 --config Config.json\n\n"+
			"Runs a Service Bus emulator for tests. Set SBEMU_SHARED_ACCESS_KEY to check clients' SAS tokens.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *config == "" {
		fs.Usage()
		return errors.New("--config is required")
	}
	ns, queues, err := sbemu.LoadConfigFile(*config)
	if err != nil {
		return err
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	s, err := sbemu.New(sbemu.Config{
		Namespace:       ns,
		Queues:          queues,
		SharedAccessKey: getenv("SBEMU_SHARED_ACCESS_KEY"),
		Logger:          slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level})),
	})
	if err != nil {
		return err
	}
	if err := s.Start(*listen); err != nil {
		return err
	}
	defer s.Close()
	fmt.Fprintf(stdout, "sbemu: namespace %s, %d queues, listening on %s\n%s\n", ns, len(queues), s.Addr(), s.ConnectionString())
	<-ctx.Done()
	return nil
}
