package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/hookbridge/hookbridge/ingress"
)

func callbackURLCommand(getenv env) *cobra.Command {
	var (
		base string
		ttl  time.Duration
	)
	cmd := &cobra.Command{
		Use:   "callback-url --base <url> [--ttl <duration>]",
		Short: "Print a signed callback URL to pass when answering or creating a call",
		Long: `Print a callback URL signed with the first key of
$` + envCallbackSigning + ` (keyid:secret,…; or a file named by
` + envCallbackSigning + `_FILE). Pass it as the callback URI when answering or
creating a call; the ingress accepts callbacks to it until it expires, with
any of the keys (so a retired key keeps verifying until you remove it).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			raw, err := secret(getenv, envCallbackSigning)
			if err != nil {
				return err
			}
			if raw == "" {
				return usageError{fmt.Errorf("set %s (keyid:secret,…) to sign callback URLs", envCallbackSigning)}
			}
			keys, err := ingress.ParseCallbackKeys(raw)
			if err != nil {
				return usageError{fmt.Errorf("%s: %w", envCallbackSigning, err)}
			}
			if base == "" {
				return usageError{fmt.Errorf("--base is required, e.g. --base https://hooks.example.com/acs/callbacks")}
			}
			if ttl <= 0 {
				return usageError{fmt.Errorf("--ttl %s: must be positive", ttl)}
			}
			if ttl < time.Minute {
				return usageError{fmt.Errorf("--ttl %s: the URL would expire before a call's callbacks arrive; use at least 1m, longer than your longest call", ttl)}
			}
			u, err := ingress.SignCallbackURL(base, keys[0], time.Now().Add(ttl))
			if err != nil {
				return usageError{err}
			}
			fmt.Fprintln(cmd.OutOrStdout(), u)
			return nil
		},
	}
	cmd.Flags().StringVar(&base, "base", "", "the public URL of /acs/callbacks, e.g. https://hooks.example.com/acs/callbacks")
	cmd.Flags().DurationVar(&ttl, "ttl", 24*time.Hour, "how long the URL stays valid; longer than your longest call")
	return cmd
}
