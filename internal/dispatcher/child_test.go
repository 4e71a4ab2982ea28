package dispatcher_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/internal/dispatcher"
)

const childEnv = "HERALD_TEST_DISPATCHER_CHILD"

// endpointSpec is what the specs' consumers derive from: every event type.
func endpointSpec() v1.WebhookEndpointSpec {
	return v1.WebhookEndpointSpec{
		Timeout:     &metav1.Duration{Duration: 2 * time.Second},
		MaxInFlight: 16,
	}
}

// startChild runs this test binary as a separate dispatcher process for
// one endpoint, so a spec can kill it with SIGKILL.
func startChild(ns, name, url string) *exec.Cmd {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(),
		childEnv+"=1", "CHILD_NATS="+natsURL, "CHILD_NS="+ns, "CHILD_EP="+name, "CHILD_URL="+url)
	Expect(cmd.Start()).To(Succeed())
	return cmd
}

func runChild() {
	nc, err := nats.Connect(os.Getenv("CHILD_NATS"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	d, err := dispatcher.New(ctx, js, allowLoopback)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	k, _ := signingKeys(secretA)
	p := dispatcher.DefaultPolicy()
	p.Schedule = []time.Duration{200 * time.Millisecond}
	d.Upsert(dispatcher.Endpoint{
		Namespace: os.Getenv("CHILD_NS"), Name: os.Getenv("CHILD_EP"), URL: os.Getenv("CHILD_URL"),
		Keys: k, Timeout: 2 * time.Second, PerKey: true, MaxInFlight: 16, Policy: p,
	})
	_ = d.Run(ctx)
}
