package ingress_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/hookbridge/hookbridge/ingress"
	"github.com/hookbridge/hookbridge/internal/devissuer"
	"github.com/hookbridge/hookbridge/relay"
)

// printPublisher stands in for the queue.
type printPublisher struct{}

func (printPublisher) Publish(_ context.Context, msgs []relay.Message) error {
	for _, m := range msgs {
		e, err := m.Event()
		if err != nil {
			return err
		}
		fmt.Printf("queued %s (call %s, verified by %s)\n", e.Type, e.PartitionKey, e.Verifier)
	}
	return nil
}

// An ingress that trusts a local development issuer instead of Microsoft's.
func Example() {
	// The issuer: discovery document and JWKS on loopback.
	srv := httptest.NewUnstartedServer(nil)
	iss, _ := devissuer.New("http://"+srv.Listener.Addr().String(), "my-acs-resource-id")
	srv.Config.Handler = iss.Handler()
	srv.Start()
	defer srv.Close()

	acs, err := ingress.NewACSVerifier(ingress.ACSConfig{
		Audiences: []string{"my-acs-resource-id"},
		OIDCURL:   iss.DiscoveryURL(),
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go acs.Run(ctx) // loads and refreshes the signing keys
	for !acs.Ready() {
		time.Sleep(10 * time.Millisecond)
	}

	s, err := ingress.New(ingress.Config{Publisher: printPublisher{}, ACSVerifiers: []ingress.Verifier{acs}})
	if err != nil {
		fmt.Println(err)
		return
	}
	token, _ := iss.ACSToken("")
	req := httptest.NewRequest(http.MethodPost, "/acs/callbacks", strings.NewReader(`[{"specversion":"1.0",
		"id":"1","source":"calling/callConnections/c1","type":"Microsoft.Communication.CallConnected",
		"data":{"callConnectionId":"c1","correlationId":"corr-1"}}]`))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, req)
	body, _ := io.ReadAll(rec.Body)
	fmt.Println(rec.Code, strings.TrimSpace(string(body)))
	// Output:
	// queued Microsoft.Communication.CallConnected (call corr-1, verified by acs-jwt)
	// 200 {"accepted":1}
}
