package console

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/internal/replays"
	"github.com/herald-dev/herald/pkg/events"
)

// page is what every template gets.
type page struct {
	Title string
	CSRF  string
	// Refresh is how often (ms) the page's content reloads while it is
	// open; 0 for a page that does not change (a confirmation).
	Refresh int64
	Data    any
}

var pageNames = []string{"overview", "endpoint", "event", "confirm", "replay", "error"}

func parsePages() (map[string]*template.Template, error) {
	funcs := template.FuncMap{
		"ago":    ago,
		"until":  until,
		"stamp":  stamp,
		"dur":    func(d time.Duration) string { return d.String() },
		"short":  short,
		"path":   url.PathEscape,
		"lower":  strings.ToLower,
		"code":   codeText,
		"answer": answer,
		"done": func(s v1.WebhookReplayStatus) int32 {
			return s.Delivered + s.Superseded + s.Failed + s.Skipped
		},
		"dict": func(kv ...any) map[string]any {
			m := map[string]any{}
			for i := 0; i+1 < len(kv); i += 2 {
				m[fmt.Sprint(kv[i])] = kv[i+1]
			}
			return m
		},
	}
	out := map[string]*template.Template{}
	for _, name := range pageNames {
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(assets, "assets/layout.html", "assets/"+name+".html")
		if err != nil {
			return nil, fmt.Errorf("parsing the %s page: %w", name, err)
		}
		out[name] = t
	}
	return out, nil
}

// render writes a whole page, or only its <main> when the page's own
// script asks for fresh content.
func (s *Server) render(w http.ResponseWriter, r *http.Request, code int, name string, p page) {
	p.CSRF = s.csrf
	tmpl := "layout.html"
	if r.Header.Get("X-Herald-Refresh") != "" {
		tmpl = "main"
	}
	var buf bytes.Buffer
	if err := s.pages[name].ExecuteTemplate(&buf, tmpl, p); err != nil {
		s.opts.Log.Error(err, "rendering a page", "page", name)
		http.Error(w, "the console could not draw this page", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("X-Herald-Refresh", fmt.Sprint(p.Refresh))
	w.WriteHeader(code)
	_, _ = buf.WriteTo(w)
}

func (s *Server) refresh() int64 { return s.opts.Refresh.Milliseconds() }

func (s *Server) overview(w http.ResponseWriter, r *http.Request) {
	rows, scoped, err := s.endpoints(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	p := overviewPage{Groups: groupByNamespace(rows)}
	if scoped {
		p.Scoped = s.opts.Namespace
	}
	s.render(w, r, http.StatusOK, "overview", page{Title: "Deliveries", Refresh: s.refresh(), Data: p})
}

func (s *Server) endpoint(w http.ResponseWriter, r *http.Request) {
	p, err := s.endpointData(r.Context(), r.PathValue("ns"), r.PathValue("name"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.render(w, r, http.StatusOK, "endpoint", page{Title: p.Namespace + "/" + p.Name, Refresh: s.refresh(), Data: p})
}

type overviewPage struct {
	Groups []namespaceGroup
	// Scoped is the one namespace shown when the user may not list
	// endpoints across the cluster.
	Scoped string
}

// findEvent takes the pasted id from the search box.
func (s *Server) findEvent(w http.ResponseWriter, r *http.Request) {
	id := strings.TrimSpace(r.URL.Query().Get("id"))
	if err := events.CheckID(id); err != nil {
		s.render(w, r, http.StatusBadRequest, "error", page{Title: "Not an event id", Data: err.Error()})
		return
	}
	http.Redirect(w, r, "/events/"+url.PathEscape(id), http.StatusSeeOther)
}

type eventPage struct {
	ID string
	At []eventAt
}

func (s *Server) event(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := events.CheckID(id); err != nil {
		s.render(w, r, http.StatusBadRequest, "error", page{Title: "Not an event id", Data: err.Error()})
		return
	}
	at, err := s.eventData(r.Context(), id)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.render(w, r, http.StatusOK, "event", page{Title: "Event " + id, Refresh: s.refresh(), Data: eventPage{ID: id, At: at}})
}

// replaySpec reads what a replay form asks for: event ids, or an
// endpoint's dead letters (of one reason).
func replaySpec(r *http.Request) (v1.WebhookReplaySpec, error) {
	spec := v1.WebhookReplaySpec{Endpoint: r.PostFormValue("endpoint")}
	if spec.Endpoint == "" {
		return spec, errors.New("which endpoint? the form named none")
	}
	spec.EventIDs = strings.Fields(strings.ReplaceAll(r.PostFormValue("ids"), ",", " "))
	if r.PostFormValue("deadLetters") != "" {
		spec.DeadLetters = &v1.ReplayDeadLetters{}
		if reason := r.PostFormValue("reason"); reason != "" {
			spec.DeadLetters.Reasons = []string{reason}
		}
	}
	if (len(spec.EventIDs) > 0) == (spec.DeadLetters != nil) {
		return spec, errors.New("choose either event ids or the dead letters")
	}
	if l := r.PostFormValue("limit"); l != "" {
		n, err := strconv.ParseInt(l, 10, 32)
		if err != nil || n < 1 || n > v1.MaxReplayLimit {
			return spec, fmt.Errorf("limit %q is not a count from 1 to %d", l, v1.MaxReplayLimit)
		}
		spec.Limit = int32(n)
	}
	return spec, nil
}

// confirmPage is a dry run's answer, with the form that starts the
// replay it describes.
type confirmPage struct {
	Namespace string
	Spec      v1.WebhookReplaySpec
	IDs       string
	Reason    string
	DryRun    *v1.WebhookReplay
	Would     int32
	Back      string
}

// dryTimeout bounds how long the confirmation waits for the dry run.
const dryTimeout = 30 * time.Second

func (s *Server) dryRun(w http.ResponseWriter, r *http.Request) {
	ns := r.PathValue("ns")
	spec, err := replaySpec(r)
	if err != nil {
		s.render(w, r, http.StatusBadRequest, "error", page{Title: "No replay", Data: err.Error()})
		return
	}
	dry := spec
	dry.DryRun = true
	// The dry run counts whatever the selection holds; the replay it
	// confirms is held to that count (confirm.html), so what arrives
	// meanwhile is refused, not sent.
	dry.Limit = v1.MaxReplayLimit
	ctx, cancel := context.WithTimeout(r.Context(), dryTimeout)
	defer cancel()
	rp, err := replays.CreateAndWait(ctx, s.kube, ns, spec.Endpoint+"-dry-", dry, s.opts.ReplayPoll, nil)
	if rp != nil {
		// The dry run has said what it had to.
		defer func() { _ = client.IgnoreNotFound(s.kube.Delete(context.WithoutCancel(ctx), rp)) }()
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	p := confirmPage{
		Namespace: ns, Spec: spec, IDs: strings.Join(spec.EventIDs, " "), DryRun: rp, Would: replays.WouldSend(rp),
		Back: r.PostFormValue("back"),
	}
	if spec.DeadLetters != nil && len(spec.DeadLetters.Reasons) > 0 {
		p.Reason = spec.DeadLetters.Reasons[0]
	}
	s.render(w, r, http.StatusOK, "confirm", page{Title: "Replay to " + spec.Endpoint + "?", Data: p})
}

func (s *Server) replay(w http.ResponseWriter, r *http.Request) {
	ns := r.PathValue("ns")
	spec, err := replaySpec(r)
	if err != nil {
		s.render(w, r, http.StatusBadRequest, "error", page{Title: "No replay", Data: err.Error()})
		return
	}
	rp, err := replays.Create(r.Context(), s.kube, ns, spec.Endpoint+"-", spec)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	http.Redirect(w, r, "/ns/"+url.PathEscape(ns)+"/replays/"+url.PathEscape(rp.Name), http.StatusSeeOther)
}

type replayView struct {
	*v1.WebhookReplay
	Stalled *metav1.Condition
}

func (s *Server) replayPage(w http.ResponseWriter, r *http.Request) {
	var rp v1.WebhookReplay
	if err := s.kube.Get(r.Context(), client.ObjectKey{Namespace: r.PathValue("ns"), Name: r.PathValue("name")}, &rp); err != nil {
		s.fail(w, r, err)
		return
	}
	refresh := s.refresh()
	if replays.Ended(rp.Status.Phase) {
		refresh = 0 // nothing more will change
	}
	s.render(w, r, http.StatusOK, "replay", page{Title: "Replay " + rp.Name, Refresh: refresh, Data: replayView{WebhookReplay: &rp, Stalled: replays.Stalled(&rp)}})
}

// timeOf takes a *metav1.Time or a metav1.Time, as the API types hold
// both; nil for none.
func timeOf(v any) *time.Time {
	switch t := v.(type) {
	case *metav1.Time:
		if t != nil && !t.IsZero() {
			return &t.Time
		}
	case metav1.Time:
		if !t.IsZero() {
			return &t.Time
		}
	}
	return nil
}

// ago is how long before now t was, to the second under a minute.
func ago(v any) string {
	t := timeOf(v)
	if t == nil {
		return "never"
	}
	return human(time.Since(*t)) + " ago"
}

// until is "in 47s", or "due" once t has passed.
func until(v any) string {
	t := timeOf(v)
	if t == nil {
		return ""
	}
	d := time.Until(*t)
	if d <= 0 {
		return "due"
	}
	return "in " + human(d)
}

func human(d time.Duration) string {
	switch d = d.Round(time.Second); {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

// stamp is t as the page's script reads it (RFC 3339).
func stamp(v any) string {
	t := timeOf(v)
	if t == nil {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

// answer is how an attempt ended, in a few words: "503 HTTPError", or
// "Timeout" when no answer came.
func answer(code int32, reason string) string {
	if code == 0 {
		return reason
	}
	return strings.TrimSpace(fmt.Sprint(code, " ", reason))
}

// codeText is a status code as support reads it: "none" when no answer came.
func codeText(c int32) string {
	if c == 0 {
		return "none"
	}
	return fmt.Sprint(c)
}
