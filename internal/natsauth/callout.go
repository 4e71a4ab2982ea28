package natsauth

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apiserver/pkg/authentication/serviceaccount"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// DefaultAudience is the audience of the ServiceAccount tokens Herald's
// NATS accepts. A token for another audience (the API server's own, say)
// is refused, so a token stolen from elsewhere does not open NATS, and a
// Herald token does not open the API server.
const DefaultAudience = "nats.herald.dev"

// DefaultMaxTTL caps an issued user JWT when the token has no expiry.
const DefaultMaxTTL = time.Hour

// DispatcherServiceAccount is the ServiceAccount the operator gives each
// namespace's dispatcher; its tokens get RoleDispatcher.
const DispatcherServiceAccount = "herald-dispatcher"

// The RBAC check for producers and readers: a SubjectAccessReview in the
// token's namespace. Producers are granted with a RoleBinding to the
// shipped ClusterRole herald-producer; readers are whoever may get the
// namespace's WebhookEndpoints.
var (
	producerAccess = authzv1.ResourceAttributes{Group: "webhooks.herald.dev", Resource: "events", Verb: "publish"}
	readerAccess   = authzv1.ResourceAttributes{Group: "webhooks.herald.dev", Resource: "webhookendpoints", Verb: "get"}
)

// The callout's RBAC: it reviews tokens and asks RBAC about producers.
// +kubebuilder:rbac:groups=authentication.k8s.io,resources=tokenreviews,verbs=create
// +kubebuilder:rbac:groups=authorization.k8s.io,resources=subjectaccessreviews,verbs=create

// Callout answers the NATS server's authorization requests.
type Callout struct {
	// NC is the manager's own connection (the callout's auth user).
	NC *nats.Conn
	// Accounts pushes the namespace accounts users are placed in, and
	// holds the keys: Herald's account signs the answers, each
	// namespace's account its users.
	Accounts *Accounts
	// Client creates TokenReviews and SubjectAccessReviews.
	Client client.Client
	// Audience tokens must carry; default DefaultAudience.
	Audience string
	// MaxTTL caps a user JWT's life; default DefaultMaxTTL.
	MaxTTL time.Duration
	// Readers are the ServiceAccounts ("namespace/name") that read every
	// namespace's delivery log: the delivery API server's. They get a
	// user of Herald's own account with ReaderPermissions.
	Readers []string
	Log     logr.Logger
}

// SubjectAuth is where the server sends authorization requests.
const SubjectAuth = "$SYS.REQ.USER.AUTH"

// Start serves requests until ctx ends. Every manager replica serves (a
// queue group shares the load), so a leader change never stops clients
// from connecting.
func (c *Callout) Start(ctx context.Context) error {
	if c.Audience == "" {
		c.Audience = DefaultAudience
	}
	if c.MaxTTL <= 0 {
		c.MaxTTL = DefaultMaxTTL
	}
	// Requests are answered concurrently (a TokenReview and SARs each),
	// up to a bound, so a reconnect storm after a NATS restart does not
	// queue every client behind one slow review.
	slots := make(chan struct{}, 32)
	sub, err := c.NC.QueueSubscribe(SubjectAuth, "herald-callout", func(m *nats.Msg) {
		slots <- struct{}{}
		go func() { defer func() { <-slots }(); c.serve(ctx, m) }()
	})
	if err != nil {
		return fmt.Errorf("subscribing to %s: %w", SubjectAuth, err)
	}
	<-ctx.Done()
	return sub.Unsubscribe()
}

// NeedLeaderElection is false: see Start.
func (c *Callout) NeedLeaderElection() bool { return false }

func (c *Callout) serve(ctx context.Context, m *nats.Msg) {
	req, err := jwt.DecodeAuthorizationRequestClaims(string(m.Data))
	if err != nil {
		c.Log.Error(err, "undecodable authorization request")
		return // the server times the request out and refuses the client
	}
	// The server gives up on a request after its auth timeout; an answer
	// after that is wasted work, so the review gets no longer.
	deadline := time.Now().Add(2 * time.Second)
	if req.Expires > 0 {
		deadline = time.Unix(req.Expires, 0)
	}
	if time.Now().After(deadline) {
		return
	}
	rctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	user, id, err := c.Authorize(rctx, req)
	resp := jwt.NewAuthorizationResponseClaims(req.UserNkey)
	resp.Audience = req.Server.ID
	if err != nil {
		// The client sees only "Authorization Violation"; the reason is
		// ours to log, without the token.
		c.Log.Info("NATS connection refused", "client", req.ClientInformation.Name, "host", req.ClientInformation.Host, "reason", err.Error())
		resp.Error = "not authorized"
	} else {
		c.Log.V(1).Info("NATS connection authorized", "client", req.ClientInformation.Name, "identity", id)
		resp.Jwt = user
	}
	out, err := resp.Encode(c.Accounts.Keys.Issuer())
	if err != nil {
		c.Log.Error(err, "signing authorization response")
		return
	}
	if err := m.Respond([]byte(out)); err != nil {
		c.Log.Error(err, "answering authorization request")
	}
}

// Identity is who a token turned out to be, for logs.
type Identity struct {
	Namespace, ServiceAccount string
	Roles                     []Role
}

func (i Identity) String() string {
	return fmt.Sprintf("%s/%s %v", i.Namespace, i.ServiceAccount, i.Roles)
}

// Authorize checks the request's token and returns the signed user JWT.
func (c *Callout) Authorize(ctx context.Context, req *jwt.AuthorizationRequestClaims) (string, Identity, error) {
	token := req.ConnectOptions.Token
	if token == "" {
		return "", Identity{}, errors.New("no ServiceAccount token")
	}
	tr := &authnv1.TokenReview{Spec: authnv1.TokenReviewSpec{Token: token, Audiences: []string{c.Audience}}}
	if err := c.Client.Create(ctx, tr); err != nil {
		return "", Identity{}, fmt.Errorf("reviewing the token: %w", err)
	}
	if !tr.Status.Authenticated {
		return "", Identity{}, fmt.Errorf("token not authenticated: %s", tr.Status.Error)
	}
	if !slices.Contains(tr.Status.Audiences, c.Audience) {
		return "", Identity{}, fmt.Errorf("token is not for audience %s", c.Audience)
	}
	ns, name, err := serviceaccount.SplitUsername(tr.Status.User.Username)
	if err != nil {
		return "", Identity{}, fmt.Errorf("only ServiceAccount tokens are accepted, not %q", tr.Status.User.Username)
	}
	id := Identity{Namespace: ns, ServiceAccount: name}
	expires := time.Now().Add(c.MaxTTL)
	if exp, ok := tokenExpiry(token); ok && exp.Before(expires) {
		expires = exp
	}
	if slices.Contains(c.Readers, ns+"/"+name) {
		id.Roles = []Role{RoleClusterReader}
		uc := jwt.NewUserClaims(req.UserNkey)
		uc.Name, uc.Expires = id.Namespace+"/"+id.ServiceAccount, expires.Unix()
		uc.Permissions = ReaderPermissions(ReaderInbox(ns, name))
		signed, err := uc.Encode(c.Accounts.Keys.Issuer())
		if err != nil {
			return "", id, fmt.Errorf("signing user JWT: %w", err)
		}
		return signed, id, nil
	}
	if name == DispatcherServiceAccount {
		id.Roles = append(id.Roles, RoleDispatcher)
	}
	for _, check := range []struct {
		role Role
		attr authzv1.ResourceAttributes
	}{{RoleProducer, producerAccess}, {RoleReader, readerAccess}} {
		ok, err := c.allowed(ctx, tr.Status.User, ns, check.attr)
		if err != nil {
			if len(id.Roles) > 0 {
				// The dispatcher needs no RBAC answer to do its job.
				c.Log.Info("RBAC check failed; granting the dispatcher role only", "identity", id.String(), "error", err.Error())
				break
			}
			return "", id, err
		}
		if ok {
			id.Roles = append(id.Roles, check.role)
		}
	}
	if len(id.Roles) == 0 {
		return "", id, fmt.Errorf("ServiceAccount %s/%s may not use Herald's NATS: bind the ClusterRole herald-producer to it in its namespace", ns, name)
	}
	// The user belongs to its namespace's account, which must be on the
	// server before the answer names it.
	if err := c.Accounts.Ensure(ctx, req.Server.ID, ns); err != nil {
		return "", id, err
	}
	account, err := c.Accounts.Keys.NamespaceKey(ns)
	if err != nil {
		return "", id, err
	}
	uc := jwt.NewUserClaims(req.UserNkey)
	uc.Name = id.Namespace + "/" + id.ServiceAccount
	// The user lives no longer than the token: at expiry the server
	// closes the connection, and nats.go reconnects with the token that
	// the kubelet has rotated into the file meanwhile.
	uc.Expires = expires.Unix()
	uc.Permissions = Permissions(ns, name, id.Roles...)
	signed, err := uc.Encode(account)
	if err != nil {
		return "", id, fmt.Errorf("signing user JWT: %w", err)
	}
	return signed, id, nil
}

func (c *Callout) allowed(ctx context.Context, u authnv1.UserInfo, ns string, attr authzv1.ResourceAttributes) (bool, error) {
	attr.Namespace = ns
	extra := map[string]authzv1.ExtraValue{}
	for k, v := range u.Extra {
		extra[k] = authzv1.ExtraValue(v)
	}
	sar := &authzv1.SubjectAccessReview{
		ObjectMeta: metav1.ObjectMeta{},
		Spec:       authzv1.SubjectAccessReviewSpec{User: u.Username, UID: u.UID, Groups: u.Groups, Extra: extra, ResourceAttributes: &attr},
	}
	if err := c.Client.Create(ctx, sar); err != nil {
		return false, fmt.Errorf("checking %s %s for %s: %w", attr.Verb, attr.Resource, u.Username, err)
	}
	return sar.Status.Allowed, nil
}

// tokenExpiry reads the exp claim of a JWT the TokenReview has already
// verified; nothing here is trusted before that.
func tokenExpiry(token string) (time.Time, bool) {
	c := tokenClaims(token)
	if c.Exp == 0 {
		return time.Time{}, false
	}
	return time.Unix(c.Exp, 0), true
}

type claims struct {
	Exp int64  `json:"exp"`
	Sub string `json:"sub"`
}

// tokenClaims decodes a JWT's payload without verifying it; zero claims
// when it is not one.
func tokenClaims(token string) claims {
	var c claims
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return c
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil || json.Unmarshal(b, &c) != nil {
		return claims{}
	}
	return c
}
