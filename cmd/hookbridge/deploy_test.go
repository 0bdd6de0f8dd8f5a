package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/url"
	"os"
	"path"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"

	"github.com/hookbridge/hookbridge/internal/sbemu"
	"github.com/hookbridge/hookbridge/internal/sbemu/sbemutest"
	"github.com/hookbridge/hookbridge/relay"
)

type composeFile struct {
	Volumes  map[string]any `yaml:"volumes"`
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
	checkComposeSpool(t, c)
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
	s := sbemutest.NewServerConfig(t, sbemu.Config{Namespace: ns, Queues: queues})
	env := map[string]string{envServiceBusConnStr: s.ConnectionString()}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	qu, err := openQueue(ctx, c.Services["ingress"].Environment["HOOKBRIDGE_QUEUE"], func(k string) string { return env[k] }, nil, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer qu.Close()
	if bg := qu.background(true); bg != nil { // the session pool Receive takes from
		go bg(ctx)
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

// spoolDir is where the image keeps the embedded queue and the spool.
const spoolDir = "/var/lib/hookbridge"

// spoolPath returns the file of a sqlite: spool URL.
func spoolPath(t *testing.T, where, raw string) string {
	t.Helper()
	p, ok := strings.CutPrefix(raw, "sqlite:")
	if !ok || !path.IsAbs(p) {
		t.Fatalf("%s: HOOKBRIDGE_SPOOL %q is not sqlite:<absolute path>", where, raw)
	}
	p, _, _ = strings.Cut(p, "?")
	return p
}

// checkComposeSpool: the compose stack's ingress runs with a spool on a
// named volume, in the directory the image makes writable for its user.
func checkComposeSpool(t *testing.T, c composeFile) {
	t.Helper()
	ing := c.Services["ingress"]
	file := spoolPath(t, "docker-compose.yml ingress", ing.Environment["HOOKBRIDGE_SPOOL"])
	mounted := false
	for _, v := range ing.Volumes {
		name, dir, _ := strings.Cut(v, ":")
		if _, named := c.Volumes[name]; named && path.Dir(file) == dir {
			mounted = true
		}
	}
	if !mounted {
		t.Errorf("docker-compose.yml: the ingress's spool %s is not on a named volume (volumes %v, declared %v)", file, ing.Volumes, c.Volumes)
	}
	if path.Dir(file) != spoolDir {
		t.Errorf("docker-compose.yml: the spool %s is outside %s, the directory the image makes writable", file, spoolDir)
	}
	docker, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"--chown=65532:65532 /out/data " + spoolDir, `VOLUME ["` + spoolDir + `"]`, "USER 65532:65532"} {
		if !bytes.Contains(docker, []byte(want)) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
}

// k8sObject is the part of a Kubernetes manifest the AKS checks read.
type k8sObject struct {
	Kind string `yaml:"kind"`
	Spec struct {
		Template struct {
			Metadata struct {
				Labels map[string]string `yaml:"labels"`
			} `yaml:"metadata"`
			Spec struct {
				ServiceAccountName            string `yaml:"serviceAccountName"`
				TerminationGracePeriodSeconds int    `yaml:"terminationGracePeriodSeconds"`
				SecurityContext               struct {
					RunAsUser int `yaml:"runAsUser"`
					FSGroup   int `yaml:"fsGroup"`
				} `yaml:"securityContext"`
				Containers []struct {
					Args []string `yaml:"args"`
					Env  []struct {
						Name  string `yaml:"name"`
						Value string `yaml:"value"`
					} `yaml:"env"`
					ReadinessProbe struct {
						HTTPGet struct {
							Path string `yaml:"path"`
							Port int    `yaml:"port"`
						} `yaml:"httpGet"`
					} `yaml:"readinessProbe"`
					VolumeMounts []struct {
						Name      string `yaml:"name"`
						MountPath string `yaml:"mountPath"`
					} `yaml:"volumeMounts"`
				} `yaml:"containers"`
			} `yaml:"spec"`
		} `yaml:"template"`
		VolumeClaimTemplates []struct {
			Metadata struct {
				Name string `yaml:"name"`
			} `yaml:"metadata"`
			Spec struct {
				AccessModes []string `yaml:"accessModes"`
			} `yaml:"spec"`
		} `yaml:"volumeClaimTemplates"`
	} `yaml:"spec"`
}

// TestAKSManifest checks deploy/aks/ingress.yaml (no cluster runs here):
// a StatefulSet whose every replica keeps its spool on its own disk, run
// as the image's user, with settings that are flags of hookbridge ingress,
// probed on /readyz, and given time to finish its commits on shutdown.
func TestAKSManifest(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile("../../deploy/aks/ingress.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var sts *k8sObject
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	for {
		var o k8sObject
		if err := dec.Decode(&o); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("deploy/aks/ingress.yaml: %v", err)
		}
		if o.Kind == "StatefulSet" {
			sts = &o
		}
	}
	if sts == nil {
		t.Fatal("deploy/aks/ingress.yaml has no StatefulSet")
	}
	pod := sts.Spec.Template.Spec
	if len(pod.Containers) != 1 || len(pod.Containers[0].Args) == 0 || pod.Containers[0].Args[0] != "ingress" {
		t.Fatalf("containers %+v, want one running ingress", pod.Containers)
	}
	c := pod.Containers[0]
	if pod.SecurityContext.RunAsUser != 65532 || pod.SecurityContext.FSGroup != 65532 {
		t.Errorf("security context %+v: run as the image's user 65532 and give it the disk (fsGroup)", pod.SecurityContext)
	}
	if sts.Spec.Template.Metadata.Labels["azure.workload.identity/use"] != "true" || pod.ServiceAccountName == "" {
		t.Error("the pod does not use workload identity")
	}
	flags := ingressCommand(nil).Flags()
	env := map[string]string{}
	for _, e := range c.Env {
		env[e.Name] = e.Value
		flag := strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(e.Name, "HOOKBRIDGE_"), "_", "-"))
		if strings.HasPrefix(e.Name, "HOOKBRIDGE_") && flags.Lookup(flag) == nil {
			t.Errorf("%s is not a flag of hookbridge ingress", e.Name)
		}
	}
	if u, err := url.Parse(env["HOOKBRIDGE_QUEUE"]); err != nil || u.Scheme != "servicebus" {
		t.Errorf("HOOKBRIDGE_QUEUE %q is not a Service Bus queue", env["HOOKBRIDGE_QUEUE"])
	}
	file := spoolPath(t, "deploy/aks/ingress.yaml", env["HOOKBRIDGE_SPOOL"])
	claims := map[string][]string{}
	for _, v := range sts.Spec.VolumeClaimTemplates {
		claims[v.Metadata.Name] = v.Spec.AccessModes
	}
	onDisk := false
	for _, m := range c.VolumeMounts {
		if modes, ok := claims[m.Name]; ok && m.MountPath == path.Dir(file) && len(modes) == 1 && modes[0] == "ReadWriteOnce" {
			onDisk = true
		}
	}
	if !onDisk {
		t.Errorf("the spool %s is not on a ReadWriteOnce volume claim of each replica (mounts %+v, claims %v)", file, c.VolumeMounts, claims)
	}
	_, adminPort, _ := strings.Cut(env["HOOKBRIDGE_ADMIN_LISTEN"], ":")
	if c.ReadinessProbe.HTTPGet.Path != "/readyz" || strconv.Itoa(c.ReadinessProbe.HTTPGet.Port) != adminPort {
		t.Errorf("readiness probe %+v, admin listener %q", c.ReadinessProbe.HTTPGet, env["HOOKBRIDGE_ADMIN_LISTEN"])
	}
	shutdown, _ := time.ParseDuration(flags.Lookup("shutdown-timeout").DefValue)
	if time.Duration(pod.TerminationGracePeriodSeconds)*time.Second <= shutdown {
		t.Errorf("terminationGracePeriodSeconds %d does not outlast --shutdown-timeout %s", pod.TerminationGracePeriodSeconds, shutdown)
	}
	readme, _ := os.ReadFile("../../README.md")
	if !bytes.Contains(readme, []byte("deploy/aks/ingress.yaml")) {
		t.Error("the README does not point to deploy/aks/ingress.yaml")
	}
}
