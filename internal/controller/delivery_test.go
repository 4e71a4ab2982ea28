// Deliveries through the real dispatcher: the operator's status follows
// what a real receiver answers.
package controller

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	v1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/internal/dispatcher"
	"github.com/herald-dev/herald/internal/testenv"
)

var _ = Describe("Delivery through the dispatcher", Ordered, func() {
	var status atomic.Int32
	var received atomic.Int32
	var srv *httptest.Server
	var ns string

	BeforeAll(func() {
		ns = newNamespace("delivery")
		status.Store(http.StatusOK)
		srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			received.Add(1)
			w.WriteHeader(int(status.Load()))
		}))
		DeferCleanup(srv.Close)

		// A second manager runs the real dispatcher next to the suite's
		// fake; controller names are per process, hence the skip. It sees
		// only this spec's namespace, so it never delivers (or fails to
		// deliver) other specs' endpoints, whatever order they run in.
		mctx, stop := context.WithCancel(ctx)
		DeferCleanup(stop)
		mgr, err := ctrl.NewManager(cfg, ctrl.Options{
			Cache:                  cache.Options{DefaultNamespaces: map[string]cache.Config{ns: {}}},
			Scheme:                 testenv.Scheme(),
			Metrics:                metricsserver.Options{BindAddress: "0"},
			HealthProbeBindAddress: "0",
			Controller:             config.Controller{SkipNameValidation: ptr.To(true)},
		})
		Expect(err).NotTo(HaveOccurred())
		Expect(SetupIndexes(ctx, mgr)).To(Succeed())
		d, err := dispatcher.New(ctx, js, dispatcher.WithLogger(GinkgoLogr), dispatcher.WithHealthInterval(200*time.Millisecond),
			dispatcher.WithEgressGuard(loopbackEgress)) // the receiver is on 127.0.0.1
		Expect(err).NotTo(HaveOccurred())
		Expect(mgr.Add(managerRunnable(d.Run))).To(Succeed())
		Expect((&DispatchReconciler{Client: mgr.GetClient(), Dispatcher: d, WatchSecrets: true, Egress: loopbackEgress}).SetupWithManager(mgr)).To(Succeed())
		go func() {
			defer GinkgoRecover()
			Expect(mgr.Start(mctx)).To(Succeed())
		}()
	})

	It("delivers, then shows Failing on 500 and recovers", func() {
		ep := newEndpoint(ns, "billing")
		ep.Spec.URL = srv.URL + "/billing"
		create(newSecret(ns, "billing-signing"), newPolicy(ns, "fast"))
		ep.Spec.RetryPolicyRef = &v1.LocalObjectReference{Name: "fast"}
		create(ep)
		expectConditions(ns, "billing", readyAndDelivering)

		publish(ns, "subscription.updated")
		Eventually(received.Load, eventually, poll).Should(BeNumerically(">=", 1))
		expectConditions(ns, "billing", map[string]string{v1.HealthyCondition: "True/Delivering"})
		Eventually(func(g Gomega) {
			s := getEndpoint(g, ns, "billing").Status
			g.Expect(s.Backlog).To(BeZero())
			g.Expect(s.LastSuccessTime).NotTo(BeNil())
		}, eventually, poll).Should(Succeed())

		By("a receiver answering 500")
		status.Store(http.StatusInternalServerError)
		publish(ns, "subscription.updated")
		expectConditions(ns, "billing", map[string]string{v1.HealthyCondition: "False/Failing"})
		Eventually(func(g Gomega) {
			s := getEndpoint(g, ns, "billing").Status
			g.Expect(s.LastFailure).NotTo(BeNil())
			g.Expect(s.LastFailure.StatusCode).To(BeEquivalentTo(500))
			g.Expect(s.NextRetryTime).NotTo(BeNil())
			g.Expect(s.Backlog).To(BeNumerically(">=", 1))
		}, eventually, poll).Should(Succeed())

		By("the receiver recovering")
		status.Store(http.StatusOK)
		expectConditions(ns, "billing", map[string]string{v1.HealthyCondition: "True/Delivering"})
		Eventually(func(g Gomega) int64 { return getEndpoint(g, ns, "billing").Status.Backlog }, eventually, poll).Should(BeZero())
	})
})

type managerRunnable func(context.Context) error

func (f managerRunnable) Start(ctx context.Context) error { return f(ctx) }
