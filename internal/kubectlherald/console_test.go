package kubectlherald_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/chromedp/chromedp"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/herald-dev/herald/internal/kubectlherald"
	"github.com/herald-dev/herald/pkg/events"
)

// startConsole runs `kubectl herald console` as the user of kubeconfig
// until the spec ends, and returns its address and the address it printed
// (with the session key).
func startConsole(kubeconfig string, args ...string) (base, keyed string) {
	GinkgoHelper()
	pr, pw := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := kubectlherald.NewCommand(genericiooptions.IOStreams{In: strings.NewReader(""), Out: pw, ErrOut: GinkgoWriter})
	cmd.SetArgs(append([]string{"console", "--open=false", "--kubeconfig", kubeconfig}, args...))
	done := make(chan error, 1)
	go func() {
		done <- cmd.ExecuteContext(ctx)
		_ = pw.Close()
	}()
	DeferCleanup(func() {
		cancel()
		Eventually(done).WithTimeout(10 * time.Second).Should(Receive(BeNil()))
	})
	line, err := bufio.NewReader(pr).ReadString('\n')
	Expect(err).NotTo(HaveOccurred())
	go func() { _, _ = io.Copy(io.Discard, pr) }()
	m := regexp.MustCompile(`(http://127\.0\.0\.1:\d+)/\?key=[0-9a-f]{64}`).FindStringSubmatch(line)
	Expect(m).NotTo(BeEmpty(), "the console prints where it listens, with its key: %q", line)
	return m[1], m[0]
}

// chromium is Debian's Chromium (make chromium installs it), or $CHROMIUM.
func chromium() string {
	GinkgoHelper()
	if p := os.Getenv("CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	Fail("no Chromium for the console's browser tests: run `make chromium` (apt-get install chromium) or set CHROMIUM")
	return ""
}

// newBrowser is a headless Chromium tab at 1280×800, closed with the spec.
func newBrowser() context.Context {
	GinkgoHelper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium()), chromedp.NoSandbox, chromedp.WindowSize(1280, 800),
		chromedp.Flag("disable-dev-shm-usage", true), chromedp.UserDataDir(GinkgoT().TempDir()))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	bctx, cancelTab := chromedp.NewContext(actx)
	DeferCleanup(func() { cancelTab(); cancelAlloc() })
	Expect(chromedp.Do(bctx)).To(Succeed(), "starting Chromium")
	return bctx
}

// browse runs browser steps with a bound, so a page that never comes
// fails the spec instead of hanging it.
func browse(b context.Context, steps ...chromedp.Action[chromedp.Void]) {
	GinkgoHelper()
	ctx, cancel := context.WithTimeout(b, 30*time.Second)
	defer cancel()
	Expect(chromedp.Do(ctx, steps...)).To(Succeed())
}

// eval is what a script in the page returns (awaiting a promise).
func eval[T any](b context.Context, script string) T {
	GinkgoHelper()
	ctx, cancel := context.WithTimeout(b, 30*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](script, chromedp.EvalAwaitPromise))
	Expect(err).NotTo(HaveOccurred())
	return v
}

// textOf is the text of the first element sel matches, "" when none does;
// it does not wait, so it suits Eventually.
func textOf(b context.Context, sel string) string {
	GinkgoHelper()
	q, _ := json.Marshal(sel)
	return eval[string](b, fmt.Sprintf(`(document.querySelector(%s)||{}).innerText||""`, q))
}

func count(b context.Context, sel string) int {
	GinkgoHelper()
	q, _ := json.Marshal(sel)
	return eval[int](b, fmt.Sprintf(`document.querySelectorAll(%s).length`, q))
}

// screenshot saves the whole page under bin/screenshots; docs/images has
// the copies the docs show.
func screenshot(b context.Context, name string) {
	GinkgoHelper()
	ctx, cancel := context.WithTimeout(b, 30*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	Expect(err).NotTo(HaveOccurred())
	dir := os.Getenv("HERALD_SCREENSHOTS")
	if dir == "" {
		dir = filepath.Join("..", "..", "bin", "screenshots")
	}
	Expect(os.MkdirAll(dir, 0o755)).To(Succeed())
	Expect(os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644)).To(Succeed())
}

var _ = Describe("the web console on the brief's example: billing delivered, CRM timing out, a dead letter replayed", Ordered, func() {
	const ns, other = "store", "backoffice"
	var rr *receiver
	var admin string // the admin's console (its browser has the key)
	var b context.Context

	BeforeAll(func(ctx SpecContext) {
		ensureNamespace(ctx, ns)
		ensureNamespace(ctx, other)
		rr = newReceiver()
		DeferCleanup(rr.Close)
		rr.behave("/crm", 200, time.Hour) // never in time
		rr.refuse("/crm", "inv_9", http.StatusUnprocessableEntity)
		createPolicy(ctx, ns, "patient", 30*time.Second, time.Hour)
		createPolicy(ctx, other, "patient", 30*time.Second, time.Hour)
		createEndpoint(ctx, ns, "billing", rr.URL+"/billing", "patient", "subscription.*", "invoice.*")
		createEndpoint(ctx, ns, "crm", rr.URL+"/crm", "patient", "subscription.*", "invoice.*")
		createEndpoint(ctx, other, "ledger", rr.URL+"/ledger", "patient", "invoice.*")
		for _, e := range []events.Event{
			{ID: "sub_7", Namespace: ns, Type: "subscription.updated", Key: "acct_42", Version: 3, Data: json.RawMessage(`{"plan":"team"}`)},
			{ID: "inv_9", Namespace: ns, Type: "invoice.paid", Key: "invoice_9", Data: json.RawMessage(`{"amount":4200}`)},
			{ID: "inv_10", Namespace: other, Type: "invoice.paid", Key: "acct_7", Data: json.RawMessage(`{"amount":100}`)},
		} {
			_, err := pub.Publish(ctx, e)
			Expect(err).NotTo(HaveOccurred())
		}
		Eventually(func() int {
			return rr.count("/billing", "sub_7") + rr.count("/billing", "inv_9") + rr.count("/ledger", "inv_10")
		}).
			WithTimeout(30 * time.Second).Should(Equal(3))
		var keyed string
		admin, keyed = startConsole(adminKC)
		b = newBrowser()
		browse(b, chromedp.Navigate(keyed)) // the key becomes a cookie
		Expect(eval[string](b, `location.search`)).To(BeEmpty(), "the key leaves the address bar")
	}, NodeTimeout(3*time.Minute))

	It("overview: every namespace, CRM failing first, with its backlog and last failure", func() {
		browse(b, chromedp.Navigate(admin+"/"), chromedp.WaitVisible(chromedp.CSS("table.endpoints")))
		// The page refreshes itself: no reload here, status arrives live.
		Eventually(func() string { return textOf(b, `tr[data-endpoint="store/crm"]`) }).WithTimeout(30 * time.Second).
			Should(And(ContainSubstring("Failing"), ContainSubstring("Timeout")))
		Expect(eval[string](b, `document.querySelector('section[data-namespace="store"] table.endpoints tbody tr').dataset.endpoint`)).
			To(Equal("store/crm"), "the failing endpoint comes first")
		Eventually(func() string { return textOf(b, `tr[data-endpoint="store/billing"]`) }).WithTimeout(30 * time.Second).
			Should(And(ContainSubstring("Delivering"), MatchRegexp(`\d+s ago`)))
		Expect(textOf(b, "main")).To(ContainSubstring(other), "the admin sees every namespace")
		Expect(textOf(b, `tr[data-endpoint="store/crm"]`)).To(ContainSubstring("⚠"), "failing reads without colour")
		screenshot(b, "console-overview")
	})

	It("endpoint page: conditions, charts, codes, the retrying row with Timeout and a next retry, the dead letter", func() {
		browse(b, chromedp.Click(chromedp.CSS(`tr[data-endpoint="store/crm"] a`)), chromedp.WaitVisible(chromedp.CSS("table.retrying")))
		Eventually(func() string { return textOf(b, `table.retrying tr[data-event="sub_7"]`) }).
			Should(MatchRegexp(`sub_7\s+acct_42\s+Timeout.*\s+\d+\s+in \d+s`))
		// The countdown moves between refreshes.
		first := textOf(b, `table.retrying tr[data-event="sub_7"] time`)
		Eventually(func() string { return textOf(b, `table.retrying tr[data-event="sub_7"] time`) }).WithTimeout(5 * time.Second).ShouldNot(Equal(first))
		Expect(textOf(b, `table.dead tr[data-event="inv_9"]`)).To(MatchRegexp(`inv_9\s+invoice_9\s+TerminalResponse\s+422`))
		Expect(textOf(b, "table.codes")).To(And(ContainSubstring("none"), ContainSubstring("422")))
		Expect(count(b, "svg.chart")).To(Equal(2))
		Expect(textOf(b, "#attempts-summary")).To(MatchRegexp(`Last hour: 0 delivered, 1 retrying, 1 dead\.`))
		Expect(textOf(b, "main")).To(ContainSubstring("Ready"))
		Expect(count(b, `table.dead tr[data-event="inv_9"] form.replay button`)).To(Equal(1))
		screenshot(b, "console-endpoint")
	})

	It("event page: a pasted id shows the event at every endpoint and each attempt", func() {
		browse(b, chromedp.SetValue(chromedp.CSS("#event-id"), "sub_7"), chromedp.Submit(chromedp.CSS("#event-id")), chromedp.WaitVisible(chromedp.CSS("section.delivery")))
		Expect(textOf(b, `section.delivery[data-endpoint="store/billing"]`)).To(ContainSubstring("Sent"))
		crm := textOf(b, `section.delivery[data-endpoint="store/crm"]`)
		Expect(crm).To(ContainSubstring("Retrying"))
		Expect(crm).To(MatchRegexp(`Next retry\s+in \d+s`))
		Expect(crm).To(MatchRegexp(`1\s+\S+ ago\s+retrying\s+Timeout\s+30\dms`))
		screenshot(b, "console-event")

		browse(b, chromedp.SetValue(chromedp.CSS("#event-id"), "not an id!"), chromedp.Submit(chromedp.CSS("#event-id")), chromedp.WaitVisible(chromedp.CSS("#error")))
		Expect(textOf(b, "h1")).To(Equal("Not an event id"))
	})

	It("replay: CRM fixed, the dead letter replayed from its page: dry run, confirmation with the count, live progress to Succeeded", func() {
		rr.fix("/crm")
		before := rr.count("/crm", "inv_9")
		browse(b, chromedp.Navigate(admin+"/ns/store/endpoints/crm"), chromedp.WaitVisible(chromedp.CSS(`table.dead tr[data-event="inv_9"] form.replay button`)))
		browse(b, chromedp.Click(chromedp.CSS(`table.dead tr[data-event="inv_9"] form.replay button`)))
		Eventually(func() string { return textOf(b, "body") }).WithTimeout(40 * time.Second).Should(ContainSubstring("Dry run:"))
		Expect(textOf(b, "#dry-run")).To(Equal("Dry run: 1 of 1 matched events would be sent to crm, 0 skipped."))
		Expect(textOf(b, "#confirm")).To(Equal("Replay 1 event to crm"))
		Expect(rr.count("/crm", "inv_9")).To(Equal(before), "a dry run sends nothing")
		screenshot(b, "console-replay-confirm")

		browse(b, chromedp.Click(chromedp.CSS("#confirm")), chromedp.WaitVisible(chromedp.CSS("#replay-phase")))
		eval[string](b, `window.heraldMark = "same page"`)
		Eventually(func() string { return textOf(b, "#replay-phase") }).WithTimeout(30 * time.Second).Should(Equal("Succeeded"))
		Expect(eval[string](b, `window.heraldMark || ""`)).To(Equal("same page"), "the progress came without a reload")
		Expect(textOf(b, "#replay-counts")).To(Equal("1 delivered, 0 superseded, 0 failed, 0 skipped of 1"))
		Expect(rr.count("/crm", "inv_9")).To(Equal(before + 1))
		screenshot(b, "console-replay")

		browse(b, chromedp.Navigate(admin+"/ns/store/endpoints/crm"), chromedp.WaitVisible(chromedp.CSS("table.replays")))
		Expect(textOf(b, "table.replays")).To(ContainSubstring("Succeeded"))
		Expect(textOf(b, `table.dead tr[data-event="inv_9"]`)).To(ContainSubstring("replayed"))
	})

	It("reads at a phone's width: nothing wider than the window but the tables' own scroll", func() {
		browse(b, chromedp.EmulateViewport(390, 800), chromedp.Navigate(admin+"/"), chromedp.WaitVisible(chromedp.CSS("table.endpoints")))
		Expect(eval[bool](b, `document.documentElement.scrollWidth > window.innerWidth`)).To(BeFalse())
		screenshot(b, "console-narrow")
		browse(b, chromedp.EmulateViewport(1280, 800))
	})

	It("refuses whoever lacks its key, and what did not come from its own page: no CSRF token, another origin, another host", func() {
		By("another user of the machine, without the key")
		resp, err := http.Get(admin + "/")
		Expect(err).NotTo(HaveOccurred())
		_ = resp.Body.Close()
		Expect(resp.StatusCode).To(Equal(http.StatusUnauthorized))

		By("with the key, but forms not from the console's page")
		_, keyed := startConsole(adminKC)
		jar, err := cookiejar.New(nil)
		Expect(err).NotTo(HaveOccurred())
		c := &http.Client{Jar: jar}
		resp, err = c.Get(keyed)
		Expect(err).NotTo(HaveOccurred())
		_ = resp.Body.Close()
		Expect(resp.StatusCode).To(Equal(http.StatusOK))
		base := resp.Request.URL.Scheme + "://" + resp.Request.URL.Host
		post := func(host string, form url.Values, origin string) *http.Response {
			GinkgoHelper()
			req, err := http.NewRequest(http.MethodPost, base+"/ns/store/replays", strings.NewReader(form.Encode()))
			Expect(err).NotTo(HaveOccurred())
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			if host != "" {
				req.Host = host
			}
			if origin != "" {
				req.Header.Set("Origin", origin)
			}
			resp, err := c.Do(req)
			Expect(err).NotTo(HaveOccurred())
			_ = resp.Body.Close()
			return resp
		}
		form := url.Values{"endpoint": {"crm"}, "ids": {"inv_9"}}
		Expect(post("", form, "").StatusCode).To(Equal(http.StatusForbidden), "no token")
		form.Set("csrf", "guessed")
		Expect(post("", form, "").StatusCode).To(Equal(http.StatusForbidden), "a wrong token")
		Expect(post("", form, "http://evil.example").StatusCode).To(Equal(http.StatusForbidden), "another origin")
		Expect(post("evil.example", form, "").StatusCode).To(Equal(http.StatusMisdirectedRequest), "DNS rebinding: another host name")
	})

	It("shows a view user their namespace only, and no replay where RBAC forbids it", func(ctx SpecContext) {
		// A namespace's user may not list across the cluster: the console
		// shows their kubeconfig's namespace, or -n's.
		viewerConsole, keyed := startConsole(viewer(ctx, "console-viewer", ns), "-n", ns)
		v := newBrowser()
		browse(v, chromedp.Navigate(keyed))
		browse(v, chromedp.Navigate(viewerConsole+"/"), chromedp.WaitVisible(chromedp.CSS("table.endpoints")))
		main := textOf(v, "main")
		Expect(main).To(ContainSubstring("crm"))
		Expect(main).NotTo(ContainSubstring(other))
		Expect(main).NotTo(ContainSubstring("ledger"))

		browse(v, chromedp.Navigate(viewerConsole+"/ns/store/endpoints/crm"), chromedp.WaitVisible(chromedp.CSS("table.dead")))
		Expect(count(v, "form.replay")).To(BeZero(), "view may not create replays: no button")

		browse(v, chromedp.Navigate(viewerConsole+"/ns/backoffice/endpoints/ledger"), chromedp.WaitVisible(chromedp.CSS("#error")))
		Expect(textOf(v, "#error")).To(ContainSubstring("forbidden"))

		browse(v, chromedp.Navigate(viewerConsole+"/events/inv_10"), chromedp.WaitVisible(chromedp.CSS("main h1")))
		Expect(textOf(v, "main")).To(ContainSubstring("No endpoint you may see has this event."))

		By("a replay forced through the viewer's console, token and all, is the API server's to refuse")
		answer := eval[string](v, `fetch("/ns/store/replays", {method: "POST",
				headers: {"Content-Type": "application/x-www-form-urlencoded"},
				body: "endpoint=crm&ids=inv_9&csrf=" + document.querySelector("meta[name=csrf]").content})
			.then(async r => r.status + " " + (await r.text()))`)
		Expect(answer).To(HavePrefix("403 "))
		Expect(answer).To(ContainSubstring("forbidden"))
	})
})
