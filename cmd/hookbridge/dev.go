package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/spf13/cobra"

	"github.com/hookbridge/hookbridge/consumer"
	"github.com/hookbridge/hookbridge/ingress"
	"github.com/hookbridge/hookbridge/internal/devissuer"
)

// Identities the development issuer signs for.
const (
	// devAudience is the ACS resource ID of Call Automation tokens.
	devAudience = "00000000-0000-4000-8000-00000000dev0"
	// devTenant and devEntraApp are the Entra tenant and webhook
	// application of Event Grid tokens.
	devTenant   = "00000000-0000-4000-8000-00000000dev1"
	devEntraApp = "00000000-0000-4000-8000-00000000dev2"
)

func devCommand(getenv env) *cobra.Command {
	var (
		f      ingressFlags
		w      workerFlags
		sf     spoolFlags
		common commonFlags
		demo   bool
	)
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run ingress, worker and embedded queue in one process, with a local token issuer",
		Long: `Run the ingress, a worker and the embedded queue in one process, for
development. A token issuer on loopback (OpenID Connect discovery and a JWKS
for a freshly generated RSA key) stands in for Microsoft's, and the ACS
verifier trusts it instead. The listener binds to loopback by default.

With --demo, signed sample events of a whole call go through the real HTTP
path; each delivered event is printed, and the command exits 0 once all were
delivered in order (non-zero otherwise).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			h, err := common.host(cmd, getenv, serviceDev)
			if err != nil {
				return err
			}
			defer h.closeUnlessRun()
			target, err := w.target(cmd.OutOrStdout(), h)
			if err != nil {
				return err
			}
			iss, issuerAddr, vs, err := addDevIssuer(h)
			if err != nil {
				return err
			}
			if err := f.check(vs, common.queueURL, &sf); err != nil {
				return err
			}
			if err := sf.check(cmd.Flags(), common.queueURL); err != nil {
				return err
			}
			if err := w.config().Validate(); err != nil {
				return usageError{err}
			}
			ctx, stop := context.WithCancel(cmd.Context())
			defer stop()
			q, err := common.openQueue(ctx, getenv, h, w.concurrency)
			if err != nil {
				return err
			}
			h.addQueue(q, true, !sf.enabled())
			// One shutdown timeout, registered with the ingress's flags,
			// serves both.
			w.shutdownTimeout = f.shutdownTimeout
			st, err := buildIngress(ctx, h, &f, &sf, q, vs)
			if err != nil {
				return err
			}
			var rec *recorder
			if demo {
				rec = newRecorder(target, cmd.ErrOrStderr())
				target = rec
			}
			if _, err := buildWorker(h, &w, q, target); err != nil {
				return err
			}
			if _, err := h.listenAdmin(common.adminListen); err != nil {
				return err
			}
			base := "http://" + st.addr()
			out := cmd.ErrOrStderr()
			demoErr := make(chan error, 1)
			if demo {
				h.serve(func(ctx context.Context) error {
					demoErr <- runDemo(ctx, base, iss, append(vs.acs, vs.eventGrid...), rec, out)
					stop() // the demo is over: shut everything down
					return nil
				})
			} else {
				printDevHelp(out, base, issuerAddr, common.queueURL, w.deliver)
			}
			err = h.run(ctx)
			select {
			case derr := <-demoErr:
				if derr != nil {
					return derr
				}
			default: // no demo, or one cut off by the shutdown's grace
			}
			return err
		},
	}
	f.register(cmd.Flags(), "127.0.0.1:8080", 0) // loopback: no load balancer to drain
	w.register(cmd.Flags())
	sf.register(cmd.Flags())
	common.register(cmd.Flags(), "127.0.0.1:9090")
	cmd.Flags().BoolVar(&demo, "demo", false, "send a whole call's signed sample events through the HTTP path, print each delivered event, and exit once all were delivered")
	return cmd
}

// addDevIssuer adds the development token issuer to h, on loopback, and
// returns the verifiers of both routes that trust it instead of Microsoft.
func addDevIssuer(h *host) (*devissuer.Issuer, string, *verifiers, error) {
	il, err := listen("127.0.0.1:0", "the development issuer")
	if err != nil {
		return nil, "", nil, err
	}
	h.closer(closeListener(il))
	iss, err := devissuer.New("http://"+il.Addr().String(), devAudience)
	if err != nil {
		return nil, "", nil, err
	}
	acs, err := ingress.NewACSVerifier(ingress.ACSConfig{Audiences: []string{devAudience}, OIDCURL: iss.DiscoveryURL(), Logger: h.log})
	if err != nil {
		return nil, "", nil, err
	}
	entra, err := ingress.NewEntraVerifier(ingress.EntraConfig{Tenant: devTenant, Audiences: []string{devEntraApp},
		Authority: iss.Issuer(), Logger: h.log})
	if err != nil {
		return nil, "", nil, err
	}
	srv := &http.Server{Handler: iss.Handler(), ReadHeaderTimeout: 5 * time.Second}
	h.loop(func(ctx context.Context) error {
		stop := context.AfterFunc(ctx, func() { srv.Close() })
		defer stop()
		if err := srv.Serve(il); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("development issuer: %w", err)
		}
		return nil
	})
	vs := &verifiers{acs: []ingress.Verifier{acs}, eventGrid: []ingress.Verifier{entra}, runners: []func(context.Context) error{acs.Run, entra.Run}}
	return iss, il.Addr().String(), vs, nil
}

func printDevHelp(w io.Writer, base, issuer, queueURL, deliver string) {
	callback := `[{"specversion":"1.0","id":"test-1","source":"calling/callConnections/c1","type":"Microsoft.Communication.CallConnected","data":{"callConnectionId":"c1","correlationId":"call-1"}}]`
	incoming := `[{"id":"test-0","topic":"/acs","subject":"/caller/x","eventType":"Microsoft.Communication.IncomingCall","eventTime":"2024-01-01T00:00:00Z","dataVersion":"1.0","metadataVersion":"1","data":{"correlationId":"call-1","serverCallId":"s1"}}]`
	fmt.Fprintf(w, `
hookbridge dev is running.
  ingress   %[1]s  (POST /acs/callbacks, POST /eventgrid)
  issuer    http://%[2]s  (development tokens; the verifiers trust it)
  queue     %[3]s
  deliver   %[4]s

Send a signed Call Automation callback by hand:
  TOKEN=$(curl -s http://%[2]s%[5]s)
  curl -i -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
    --data '%[6]s' \
    %[1]s/acs/callbacks

Send an IncomingCall as Event Grid would:
  TOKEN=$(curl -s 'http://%[2]s%[7]s?tenant=%[8]s&aud=%[9]s&appid=%[10]s&v1=true')
  curl -i -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' -H 'aeg-event-type: Notification' \
    --data '%[11]s' \
    %[1]s/eventgrid

Stop with Ctrl-C.
`, base, issuer, queueURL, consumer.Redact(deliver), devissuer.TokenPath, callback,
		devissuer.EntraTokenPath, devTenant, devEntraApp, ingress.EventGridAppID, incoming)
}
