package main

import (
	"context"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"

	"github.com/hookbridge/hookbridge/internal/sbemu"
	"github.com/hookbridge/hookbridge/relay"
)

type composeFile struct {
	Services map[string]struct {
		Image       string            `yaml:"image"`
		Build       any               `yaml:"build"`
		Command     []string          `yaml:"command"`
		Environment map[string]string `yaml:"environment"`
		Ports       []string          `yaml:"ports"`
		Volumes     []string          `yaml:"volumes"`
		DependsOn   []string          `yaml:"depends_on"`
	} `yaml:"services"`
}

// TestDeploymentFilesAgree parses docker-compose.yml and the emulator's
// Config.json (Docker does not run here) and checks that the services,
// ports, environment names and queue agree with each other, with the
// commands' flags and with the README; then it runs our own emulator on the
// same Config.json and sends through the queue URL the stack uses.
func TestDeploymentFilesAgree(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile("../../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	var c composeFile
	if err := yaml.Unmarshal(raw, &c); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	for _, name := range []string{"sqlserver", "servicebus-emulator", "ingress", "worker", "backend"} {
		if _, ok := c.Services[name]; !ok {
			t.Fatalf("docker-compose.yml has no %s service", name)
		}
	}
	emu := c.Services["servicebus-emulator"]
	if !strings.HasPrefix(emu.Image, "mcr.microsoft.com/azure-messaging/servicebus-emulator") {
		t.Errorf("emulator image %q", emu.Image)
	}
	if emu.Environment["SQL_SERVER"] != "sqlserver" || emu.Environment["ACCEPT_EULA"] != "Y" {
		t.Errorf("emulator environment %v", emu.Environment)
	}
	if !containsPrefix(emu.Ports, "5672:5672") {
		t.Errorf("emulator does not publish AMQP 5672: %v", emu.Ports)
	}
	configPath := ""
	for _, v := range emu.Volumes {
		host, container, _ := strings.Cut(v, ":")
		if container == "/ServiceBus_Emulator/ConfigFiles/Config.json" {
			configPath = "../../" + strings.TrimPrefix(host, "./")
		}
	}
	if configPath == "" {
		t.Fatal("the emulator does not mount a Config.json")
	}
	ns, queues, err := sbemu.LoadConfigFile(configPath)
	if err != nil {
		t.Fatalf("%s: %v", configPath, err)
	}
	byName := map[string]sbemu.QueueConfig{}
	for _, q := range queues {
		byName[q.Name] = q
	}

	readme, _ := os.ReadFile("../../README.md")
	flagsOf := map[string]*cobra.Command{"ingress": ingressCommand(nil), "worker": workerCommand(nil)}
	secrets := map[string]bool{envACSAPIKeys: true, envEventGridAPIKeys: true, envCallbackSigning: true, envServiceBusConnStr: true}
	var queueName string
	for _, svc := range []string{"ingress", "worker"} {
		s := c.Services[svc]
		if s.Build == nil || len(s.Command) == 0 || s.Command[0] != svc {
			t.Errorf("%s: builds %v, command %v", svc, s.Build, s.Command)
		}
		// Every HOOKBRIDGE_* variable is a flag of the command or a secret.
		for name := range s.Environment {
			if !strings.HasPrefix(name, "HOOKBRIDGE_") {
				continue
			}
			flag := strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(name, "HOOKBRIDGE_"), "_", "-"))
			if flagsOf[svc].Flags().Lookup(flag) == nil && !secrets[name] {
				t.Errorf("%s sets %s, which is neither a flag of hookbridge %s nor a secret", svc, name, svc)
			}
		}
		u, err := url.Parse(s.Environment["HOOKBRIDGE_QUEUE"])
		if err != nil || u.Scheme != "servicebus" {
			t.Fatalf("%s queue %q", svc, s.Environment["HOOKBRIDGE_QUEUE"])
		}
		name := strings.Trim(u.Path, "/")
		if queueName == "" {
			queueName = name
		} else if name != queueName {
			t.Errorf("ingress and worker use different queues: %s, %s", queueName, name)
		}
		cs := s.Environment[envServiceBusConnStr]
		if !strings.Contains(cs, "Endpoint=sb://servicebus-emulator") || !strings.Contains(cs, "UseDevelopmentEmulator=true") {
			t.Errorf("%s connection string does not reach the emulator service: %q", svc, cs)
		}
		if !containsString(s.DependsOn, "servicebus-emulator") {
			t.Errorf("%s does not depend on the emulator", svc)
		}
	}
	q, ok := byName[queueName]
	if !ok {
		t.Fatalf("queue %q is not in %s (%v)", queueName, configPath, byName)
	}
	if !q.RequiresSession || !q.RequiresDuplicateDetection || q.MaxDeliveryCount != 10 {
		t.Errorf("queue %s: sessions %v, duplicate detection %v, max delivery %d; want true, true, 10", q.Name, q.RequiresSession, q.RequiresDuplicateDetection, q.MaxDeliveryCount)
	}
	if !containsPrefix(c.Services["ingress"].Ports, "8080:8080") {
		t.Errorf("ingress does not publish 8080: %v", c.Services["ingress"].Ports)
	}
	deliver, err := url.Parse(c.Services["worker"].Environment["HOOKBRIDGE_DELIVER"])
	if err != nil || deliver.Hostname() != "backend" || deliver.Port() != c.Services["backend"].Environment["HTTP_PORT"] {
		t.Errorf("worker delivers to %q, backend listens on %q", c.Services["worker"].Environment["HOOKBRIDGE_DELIVER"], c.Services["backend"].Environment["HTTP_PORT"])
	}
	for _, want := range []string{"docker compose up", queueName, "deploy/servicebus/Config.json", "Azure Service Bus Data Sender", "Azure Service Bus Data Receiver"} {
		if !strings.Contains(string(readme), want) {
			t.Errorf("README does not mention %q", want)
		}
	}

	// The same Config.json serves our emulator, reached as the stack does.
	s, err := sbemu.New(sbemu.Config{Namespace: ns, Queues: queues})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	env := map[string]string{envServiceBusConnStr: s.ConnectionString()}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	qu, err := openQueue(ctx, c.Services["ingress"].Environment["HOOKBRIDGE_QUEUE"], func(k string) string { return env[k] }, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer qu.Close()
	if r, ok := qu.(runner); ok { // the session pool Receive takes from
		go r.Run(ctx)
	}
	if err := qu.SendBatch(ctx, []relay.Message{{ID: "m1", SessionID: "call-1", Body: []byte(`{}`)}}); err != nil {
		t.Fatalf("send through %s: %v", queueName, err)
	}
	msgs, err := qu.Receive(ctx, 1)
	if err != nil || msgs[0].ID != "m1" {
		t.Fatalf("receive: %v", err)
	}
	if err := qu.Complete(ctx, msgs[0]); err != nil {
		t.Fatal(err)
	}
}

func containsPrefix(list []string, prefix string) bool {
	for _, s := range list {
		if strings.HasPrefix(s, prefix) || strings.Contains(s, ":"+prefix) {
			return true
		}
	}
	return false
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
