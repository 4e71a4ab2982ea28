package natsauth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"

	"github.com/herald-dev/herald/internal/streams"
	"github.com/herald-dev/herald/pkg/events"
)

// A namespace's account holds no streams: Herald's streams stay in
// Herald's account, where the manager and the operator's reconcilers
// reach them with one connection. Herald's account exports its subjects
// and JetStream API as services, and each namespace's account imports
// exactly its namespace's part of them. A request that crosses an import
// gets a reply subject of the exporting account's own making, which
// routes the answer back into the importing account: so whatever reply
// subject a tenant names, JetStream answers inside the tenant's account,
// where only that namespace's subjects lead anywhere.

// heraldExports are the services Herald's account offers. They are
// public: only this manager signs accounts (with the operator key), and
// it gives each namespace imports of its own subjects only. They do not
// overlap, so each import has one export and one response type.
func heraldExports() jwt.Exports {
	svc := func(subject string, rt jwt.ResponseType) *jwt.Export {
		return &jwt.Export{Name: subject, Subject: jwt.Subject(subject), Type: jwt.Service, ResponseType: rt}
	}
	return jwt.Exports{
		svc(events.SubjectPrefix+".>", jwt.ResponseTypeSingleton),
		svc(streams.AttemptsPrefix+".>", jwt.ResponseTypeSingleton),
		svc(streams.DeadLetterPrefix+".>", jwt.ResponseTypeSingleton),
		svc(streams.ReplayPrefix+".>", jwt.ResponseTypeSingleton),
		svc("$KV.>", jwt.ResponseTypeSingleton),
		svc("$JS.ACK.>", jwt.ResponseTypeSingleton),
		// A pull request is answered with a batch of messages.
		svc("$JS.API.CONSUMER.MSG.NEXT.>", jwt.ResponseTypeStream),
		svc("$JS.API.CONSUMER.INFO.>", jwt.ResponseTypeSingleton),
		svc("$JS.API.CONSUMER.LIST.>", jwt.ResponseTypeSingleton),
		svc("$JS.API.STREAM.INFO.>", jwt.ResponseTypeSingleton),
		svc("$JS.API.STREAM.MSG.GET.>", jwt.ResponseTypeSingleton),
		svc("$JS.API.DIRECT.GET.>", jwt.ResponseTypeSingleton),
		svc(jsAccountInfo, jwt.ResponseTypeSingleton),
	}
}

const jsAccountInfo = "$JS.API.INFO"

// allRoles are the roles any user of a namespace can get; the account
// imports what they need together, and each user's permissions narrow it
// to its own roles.
var allRoles = []Role{RoleDispatcher, RoleProducer, RoleReader}

// NamespaceAccount is namespace ns's account JWT, signed by the operator:
// an import of every subject Permissions(ns, ...) lets a user publish,
// from Herald's account, and nothing else.
func (k Keys) NamespaceAccount(ns string) (string, error) {
	kp, err := k.NamespaceKey(ns)
	if err != nil {
		return "", fmt.Errorf("deriving the account key of namespace %s: %w", ns, err)
	}
	ac := jwt.NewAccountClaims(mustPublic(kp))
	ac.Name = ns
	herald := k.HeraldAccount()
	// An account without JetStream of its own gets the server's
	// JetStream API, answering "JetStream not enabled" to every request
	// before Herald's answer arrives, unless an import covers
	// $JS.API.INFO. No user may publish to it (Permissions has none).
	imports := append(Permissions(ns, "", allRoles...).Pub.Allow, jsAccountInfo)
	for _, s := range imports {
		ac.Imports.Add(&jwt.Import{Name: s, Subject: jwt.Subject(s), Account: herald, Type: jwt.Service})
	}
	vr := jwt.CreateValidationResults()
	ac.Validate(vr)
	if errs := vr.Errors(); len(errs) > 0 {
		return "", fmt.Errorf("account of namespace %s: %w", ns, errors.Join(errs...))
	}
	return ac.Encode(k.Operator())
}

// SubjectClaimsUpdate is where the system account takes account JWTs.
const SubjectClaimsUpdate = "$SYS.REQ.CLAIMS.UPDATE"

// Accounts pushes namespace accounts to the server's account resolver,
// over a connection of the system account.
type Accounts struct {
	Keys Keys
	// SYS is a connection as Keys.SystemUser.
	SYS *nats.Conn
	// pushed remembers the accounts pushed for a server (by its ID), so
	// the callout pushes once per namespace and server start.
	pushed sync.Map
}

// Ensure pushes namespace ns's account unless it was pushed since the
// server named serverID started; a restarted server has a new ID, so
// an account its resolver lost comes back with the next connection.
func (a *Accounts) Ensure(ctx context.Context, serverID, ns string) error {
	key := serverID + "\x00" + ns
	if _, ok := a.pushed.Load(key); ok {
		return nil
	}
	if err := a.Push(ctx, ns); err != nil {
		return err
	}
	a.pushed.Store(key, struct{}{})
	return nil
}

// Push stores namespace ns's account in the server's resolver (a full
// resolver shares it with the cluster's other servers). It is idempotent
// and cheap: one request.
func (a *Accounts) Push(ctx context.Context, ns string) error {
	acc, err := a.Keys.NamespaceAccount(ns)
	if err != nil {
		return err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
	}
	m, err := a.SYS.RequestWithContext(ctx, SubjectClaimsUpdate, []byte(acc))
	if err != nil {
		return fmt.Errorf("pushing the NATS account of namespace %s: %w", ns, err)
	}
	var resp struct {
		Error *struct {
			Code        int    `json:"code"`
			Description string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(m.Data, &resp); err != nil {
		return fmt.Errorf("pushing the NATS account of namespace %s: unreadable answer: %w", ns, err)
	}
	if resp.Error != nil {
		return fmt.Errorf("pushing the NATS account of namespace %s: %d %s", ns, resp.Error.Code, resp.Error.Description)
	}
	return nil
}
