// Package console is Herald's web console: the support view in a browser.
// It is served on 127.0.0.1 by `kubectl herald console` with the user's
// own kubeconfig identity, as `kubectl proxy` is, and reads only what the
// plugin reads (the delivery API, WebhookEndpoints and WebhookReplays), so
// it shows exactly what the user's RBAC allows. Pages are rendered on the
// server; a small embedded script refreshes them while they are watched
// and counts retries down.
package console

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/go-logr/logr"
	authorizationv1 "k8s.io/api/authorization/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	deliveryv1 "github.com/herald-dev/herald/api/delivery/v1alpha1"
	v1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/pkg/delivery"
)

//go:embed assets
var assets embed.FS

var scheme = func() *runtime.Scheme {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{deliveryv1.AddToScheme, v1.AddToScheme, authorizationv1.AddToScheme} {
		if err := add(s); err != nil {
			panic(err)
		}
	}
	return s
}()

// Options configure a console.
type Options struct {
	// Namespace is shown when the user may not list endpoints across the
	// cluster: the kubeconfig context's namespace, or -n.
	Namespace string
	// Refresh is how often a watched page reloads its content (2s).
	Refresh time.Duration
	// ReplayPoll is how often a dry run's state is read while the
	// confirmation waits for it (250ms).
	ReplayPoll time.Duration
	Log        logr.Logger
}

// Server serves the console for one user: the identity of its rest.Config.
type Server struct {
	kube     client.Client
	delivery *delivery.Client
	opts     Options
	key      string // the session key: in the printed URL, then a cookie
	csrf     string
	pages    map[string]*template.Template
	static   http.Handler
	charts   sync.Map // "namespace/endpoint" -> drawn
}

// New makes a console that acts as cfg's user.
func New(cfg *rest.Config, o Options) (*Server, error) {
	if o.Refresh <= 0 {
		o.Refresh = 2 * time.Second
	}
	if o.ReplayPoll <= 0 {
		o.ReplayPoll = 250 * time.Millisecond
	}
	kube, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return nil, fmt.Errorf("making a Kubernetes client: %w", err)
	}
	dc, err := delivery.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("making a delivery API client: %w", err)
	}
	token, key := make([]byte, 32), make([]byte, 32)
	if _, err := rand.Read(token); err != nil {
		return nil, fmt.Errorf("making the CSRF token: %w", err)
	}
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("making the session key: %w", err)
	}
	// (rand.Read never fails on Linux; the checks are for other systems.)
	pages, err := parsePages()
	if err != nil {
		return nil, err
	}
	static, err := fs.Sub(assets, "assets/static")
	if err != nil {
		return nil, err
	}
	return &Server{
		kube: kube, delivery: dc, opts: o, csrf: hex.EncodeToString(token), key: hex.EncodeToString(key), pages: pages,
		static: http.StripPrefix("/static/", http.FileServerFS(static)),
	}, nil
}

// Key is the session key: the address to open is /?key=<Key>. Anyone on
// the machine can reach 127.0.0.1, and the console acts with its user's
// credentials, so nothing is served without it.
func (s *Server) Key() string { return s.key }

// Handler is the console's HTTP handler, with its guards: requests for
// another host are refused (DNS rebinding); nothing is served without the
// session key (from the printed address, then a cookie); every page
// forbids framing and foreign scripts; and every POST must carry the
// console's CSRF token and come from its own origin.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /static/", s.static)
	mux.HandleFunc("GET /{$}", s.overview)
	mux.HandleFunc("GET /ns/{ns}/endpoints/{name}", s.endpoint)
	mux.HandleFunc("GET /events", s.findEvent)
	mux.HandleFunc("GET /events/{id}", s.event)
	mux.HandleFunc("POST /ns/{ns}/replays/dry-run", s.dryRun)
	mux.HandleFunc("POST /ns/{ns}/replays", s.replay)
	mux.HandleFunc("GET /ns/{ns}/replays/{name}", s.replayPage)
	return s.guard(mux)
}

func (s *Server) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !loopbackHost(r.Host) {
			http.Error(w, "the console answers only on 127.0.0.1 or localhost", http.StatusMisdirectedRequest)
			return
		}
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		// same-origin, not no-referrer: under no-referrer a browser sends
		// "Origin: null" with the console's own forms.
		h.Set("Referrer-Policy", "same-origin")
		h.Set("Cache-Control", "no-store")
		if !s.session(w, r) {
			return
		}
		if r.Method == http.MethodPost && !s.sameOrigin(r) {
			http.Error(w, "refused: this form did not come from this console (CSRF)", http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// session lets through a request with the session cookie. One with the
// key in its query gets the cookie and is sent on without the key, so it
// leaves the address bar and the history; anything else is refused.
func (s *Server) session(w http.ResponseWriter, r *http.Request) bool {
	// Cookies do not tell ports apart: two consoles on one machine each
	// keep their own.
	_, port, _ := net.SplitHostPort(r.Host)
	name := "herald-console-" + port
	if c, err := r.Cookie(name); err == nil && equal(c.Value, s.key) {
		return true
	}
	q := r.URL.Query()
	if equal(q.Get("key"), s.key) {
		http.SetCookie(w, &http.Cookie{Name: name, Value: s.key, Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode})
		q.Del("key")
		u := *r.URL
		u.RawQuery = q.Encode()
		http.Redirect(w, r, u.RequestURI(), http.StatusSeeOther)
		return false
	}
	http.Error(w, "open the address kubectl herald console printed: it carries this console's key", http.StatusUnauthorized)
	return false
}

func equal(a, b string) bool { return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1 }

// sameOrigin checks a POST's token and, where the browser says, its origin.
func (s *Server) sameOrigin(r *http.Request) bool {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" {
		return false
	}
	if o := r.Header.Get("Origin"); o != "" {
		u, err := url.Parse(o)
		if err != nil || u.Host != r.Host {
			return false
		}
	}
	return equal(r.PostFormValue("csrf"), s.csrf)
}

func loopbackHost(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		host = hostport
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// can asks the API server whether the user may verb resource in ns.
func (s *Server) can(ctx context.Context, verb, resource, ns string) bool {
	r := &authorizationv1.SelfSubjectAccessReview{Spec: authorizationv1.SelfSubjectAccessReviewSpec{
		ResourceAttributes: &authorizationv1.ResourceAttributes{Namespace: ns, Verb: verb, Group: v1.GroupVersion.Group, Resource: resource},
	}}
	if err := s.kube.Create(ctx, r); err != nil {
		s.opts.Log.Error(err, "asking what the user may do", "verb", verb, "resource", resource, "namespace", ns)
		return false
	}
	return r.Status.Allowed
}

// fail shows an error as a page: the API server's own words for what the
// user may not see.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	code := http.StatusBadGateway
	var st apierrors.APIStatus
	if errors.As(err, &st) {
		if c := int(st.Status().Code); c >= 400 && c < 600 {
			code = c
		}
	}
	s.render(w, r, code, "error", page{Title: http.StatusText(code), Data: err.Error()})
}
