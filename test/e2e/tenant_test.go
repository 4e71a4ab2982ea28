//go:build e2e

package e2e

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"

	v1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/internal/dispatcher"
	"github.com/herald-dev/herald/pkg/events"
)

// runID keeps event ids of one run apart from an earlier run's.
var runID = strconv.FormatInt(time.Now().Unix(), 36)

// The fast policy: retries after 1s, 2s and 3s (±10%), dead after 8s.
var fastSchedule = []time.Duration{time.Second, 2 * time.Second, 3 * time.Second}

const fastJitter = 0.10

// tenant is a namespace with a receiver (which verifies signatures with
// the tenant's secret), that secret, and the fast retry policy.
type tenant struct {
	ns       string
	receiver *forward
	token    string // the receiver's control token (its /_herald/* endpoints)
}

func (t *tenant) setUp() {
	GinkgoHelper()
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	secret := "whsec_" + base64.StdEncoding.EncodeToString(key)
	token := make([]byte, 32)
	_, _ = rand.Read(token)
	t.token = hex.EncodeToString(token)
	apply(fmt.Sprintf(`apiVersion: v1
kind: Namespace
metadata:
  name: %[1]s
  labels:
    # Herald's dispatcher and the receiver both meet the restricted standard.
    pod-security.kubernetes.io/enforce: restricted
---
apiVersion: v1
kind: Secret
metadata:
  name: signing
  namespace: %[1]s
stringData:
  v1: %[2]s
---
apiVersion: v1
kind: Secret
metadata:
  name: receiver-control
  namespace: %[1]s
stringData:
  token: %[4]s
---
apiVersion: webhooks.herald.dev/v1alpha1
kind: RetryPolicy
metadata:
  name: fast
  namespace: %[1]s
spec:
  schedule: ["1s", "2s", "3s"]
  window: 8s
  jitterPercent: 10
---
apiVersion: v1
kind: Service
metadata:
  name: receiver
  namespace: %[1]s
spec:
  clusterIP: %[5]s
  selector: {app: receiver}
  ports:
  - {name: http, port: 8080, targetPort: 8080}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: receiver
  namespace: %[1]s
spec:
  replicas: 1
  selector:
    matchLabels: {app: receiver}
  template:
    metadata:
      labels: {app: receiver}
    spec:
      securityContext:
        runAsNonRoot: true
        seccompProfile: {type: RuntimeDefault}
      containers:
      - name: receiver
        image: %[3]s
        imagePullPolicy: IfNotPresent
        args: ["receiver", "--listen=:8080"]
        env:
        - name: HERALD_RECEIVER_SECRET
          valueFrom: {secretKeyRef: {name: signing, key: v1}}
        - name: HERALD_RECEIVER_TOKEN
          valueFrom: {secretKeyRef: {name: receiver-control, key: token}}
        ports:
        - {containerPort: 8080}
        readinessProbe:
          httpGet: {path: /_herald/healthz, port: 8080}
          periodSeconds: 2
        securityContext:
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
          capabilities: {drop: ["ALL"]}
`, t.ns, secret, image, t.token, receiverIP(t.ns)))
	kubectl("-n", t.ns, "rollout", "status", "deployment/receiver", "--timeout=3m")
	t.receiver = startForward(t.ns, "svc/receiver", 8080)
}

// endpoint is what a spec varies in a WebhookEndpoint.
type endpoint struct {
	name        string
	path        string // on the tenant's receiver
	types       []string
	timeout     string
	maxInFlight int
	secret      string // default: the tenant's
	// defaultPolicy uses the built-in 24h window instead of the fast
	// policy's 8s: an event that waits out a NATS or dispatcher restart
	// unattempted for longer than its window is dead-lettered as Expired,
	// which is right, but not what a "loses nothing" spec is about.
	defaultPolicy bool
}

// create applies the endpoint as YAML and waits until it is Ready.
func (t *tenant) create(e endpoint) {
	GinkgoHelper()
	t.apply(e)
	t.waitReady(e.name)
}

func (t *tenant) apply(e endpoint) {
	GinkgoHelper()
	if e.secret == "" {
		e.secret = "signing"
	}
	if e.timeout == "" {
		e.timeout = "5s"
	}
	if e.maxInFlight == 0 {
		e.maxInFlight = 16
	}
	policy := "\n  retryPolicyRef: {name: fast}"
	if e.defaultPolicy {
		policy = ""
	}
	quoted := make([]string, len(e.types))
	for i, ty := range e.types {
		quoted[i] = strconv.Quote(ty)
	}
	apply(fmt.Sprintf(`apiVersion: webhooks.herald.dev/v1alpha1
kind: WebhookEndpoint
metadata:
  name: %s
  namespace: %s
spec:
  url: %s
  eventTypes: [%s]
  signingSecretRef: {name: %s}%s
  timeout: %s
  ordering: PerKey
  maxInFlight: %d
`, e.name, t.ns, t.url(e.path), strings.Join(quoted, ", "), e.secret, policy, e.timeout, e.maxInFlight))
}

// url is the receiver as the dispatcher pod reaches it: through the
// cluster's DNS and the Service.
func (t *tenant) url(path string) string {
	return fmt.Sprintf("http://receiver.%s.svc.cluster.local:8080%s", t.ns, path)
}

func (t *tenant) get(name string) *v1.WebhookEndpoint {
	GinkgoHelper()
	var ep v1.WebhookEndpoint
	Expect(k8s.Get(context.Background(), types.NamespacedName{Namespace: t.ns, Name: name}, &ep)).To(Succeed())
	return &ep
}

func (t *tenant) waitReady(name string) {
	GinkgoHelper()
	Eventually(func(g Gomega) {
		var ep v1.WebhookEndpoint
		g.Expect(k8s.Get(context.Background(), types.NamespacedName{Namespace: t.ns, Name: name}, &ep)).To(Succeed())
		c := apimeta.FindStatusCondition(ep.Status.Conditions, v1.ReadyCondition)
		g.Expect(c).NotTo(BeNil())
		g.Expect(c.Status).To(BeEquivalentTo("True"), "Ready: %s %s", c.Reason, c.Message)
	}).Should(Succeed(), "endpoint %s/%s Ready", t.ns, name)
}

func (t *tenant) delete(name string) {
	GinkgoHelper()
	kubectl("-n", t.ns, "delete", "webhookendpoint", name, "--wait=true", "--timeout=2m")
}

// behave tells the receiver how to answer on path.
func (t *tenant) behave(path string, status int, delay time.Duration) {
	GinkgoHelper()
	q := url.Values{"path": {path}, "status": {strconv.Itoa(status)}, "delay": {delay.String()}}
	req, err := http.NewRequest(http.MethodPut, "http://"+t.receiver.addr+"/_herald/behaviour?"+q.Encode(), nil)
	Expect(err).NotTo(HaveOccurred())
	req.Header.Set("Authorization", "Bearer "+t.token)
	Eventually(func() error {
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("receiver answered %s", resp.Status)
		}
		return nil
	}).WithTimeout(30 * time.Second).Should(Succeed())
}

// arrival is one request as the receiver saw it (herald receiver's
// /_herald/arrivals).
type arrival struct {
	Path    string    `json:"path"`
	ID      string    `json:"id"`
	Key     string    `json:"key"`
	Version int64     `json:"version"`
	Status  int       `json:"status"`
	Time    time.Time `json:"time"`
	// Authorization is sha256:<hex> of the request's Authorization header.
	Authorization string `json:"authorization"`
}

// arrivals lists what reached path, in arrival order.
func (t *tenant) arrivals(path string) ([]arrival, error) {
	req, err := http.NewRequest(http.MethodGet, "http://"+t.receiver.addr+"/_herald/arrivals?path="+url.QueryEscape(path), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+t.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("receiver answered %s", resp.Status)
	}
	var out []arrival
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return nil, fmt.Errorf("decoding arrivals: %w", err)
	}
	return out, nil
}

// counts is how many times each event id reached path.
func (t *tenant) counts(path string) (map[string]int, error) {
	all, err := t.arrivals(path)
	if err != nil {
		return nil, err
	}
	n := map[string]int{}
	for _, a := range all {
		n[a.ID]++
	}
	return n, nil
}

// publish sends one event, retrying while NATS is away: the id makes a
// retried publish one event.
func publish(ns, typ, id, key string, version int64) {
	GinkgoHelper()
	Eventually(func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := pub.Publish(ctx, events.Event{
			ID: id, Namespace: ns, Type: typ, Key: key, Version: version,
			Data: []byte(fmt.Sprintf(`{"key":%q,"version":%d}`, key, version)),
		})
		return err
	}).Should(Succeed(), "publishing %s", id)
}

// eventState is one event's state at one endpoint, as `herald status` shows it.
func eventState(ns, endpoint, id string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	states, err := dispatcher.EventStatus(ctx, js, id, ns, "")
	if err != nil {
		return "", err
	}
	for _, s := range states {
		if s.Namespace == ns && s.Endpoint == endpoint {
			return s.State, nil
		}
	}
	return "queued", nil
}
