package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/nats-io/nats.go"
	"github.com/spf13/pflag"
	"k8s.io/apiserver/pkg/server/healthz"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/herald-dev/herald/internal/apiserver"
	"github.com/herald-dev/herald/internal/deliverylog"
	"github.com/herald-dev/herald/internal/natsauth"
)

func init() {
	register("apiserver", "serve the delivery API (webhookdeliveries, deadletters, deliverysummaries) behind kube-apiserver", server(runAPIServer))
}

func runAPIServer(ctx context.Context, args []string) error {
	o := apiserver.NewOptions()
	fs := pflag.NewFlagSet("herald apiserver", pflag.ContinueOnError)
	o.AddFlags(fs)
	goFlags := flag.NewFlagSet("herald apiserver", flag.ContinueOnError)
	conn := natsFlags(goFlags)
	var tlsOpts apiserver.ServingTLS
	goFlags.StringVar(&tlsOpts.Secret, "tls-secret", "", "keep the serving certificate in this Secret of --namespace, making it when missing and renewing it within 90 days of expiry, and keep the caBundle of --apiservice in step with it (instead of --tls-cert-file)")
	goFlags.StringVar(&tlsOpts.Namespace, "namespace", os.Getenv("POD_NAMESPACE"), "namespace of the server's Service and Secret (env POD_NAMESPACE)")
	goFlags.StringVar(&tlsOpts.Service, "service", "herald-apiserver", "the server's Service: the certificate is for <service>.<namespace>.svc")
	goFlags.StringVar(&tlsOpts.APIService, "apiservice", "v1alpha1.delivery.herald.dev", "the APIService whose caBundle --tls-secret keeps")
	maxPending := goFlags.Int("max-pending", deliverylog.DefaultMaxPending, "how many events waiting in a namespace's stream one list looks at to show as Queued or Sending (the oldest)")
	fs.AddGoFlagSet(goFlags)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return flag.ErrHelp
		}
		return err
	}
	if err := o.Validate(); err != nil {
		return err
	}
	log := ctrl.Log.WithName("apiserver")
	if tlsOpts.Secret != "" {
		if err := ensureServingTLS(ctx, o, tlsOpts); err != nil {
			return err
		}
	}
	// The server reads every namespace, so its NATS user is one of
	// Herald's own account, with replies on a reader inbox of its own.
	var extra []nats.Option
	namespace := ""
	if conn.tokenFile != "" {
		token, err := readToken(conn.tokenFile)
		if err != nil {
			return err
		}
		inbox, ns, err := natsauth.TokenReaderInbox(token)
		if err != nil {
			return fmt.Errorf("--nats-token-file: %w", err)
		}
		namespace, extra = ns, append(extra, nats.CustomInboxPrefix(inbox))
	}
	nc, js, err := connectNATS(*conn, "herald-apiserver", namespace, extra...)
	if err != nil {
		return err
	}
	defer nc.Close()
	s, err := apiserver.New(o, &deliverylog.Reader{JS: js, MaxPending: *maxPending})
	if err != nil {
		return err
	}
	// Not ready while NATS is away: kube-apiserver should try another
	// replica.
	if err := s.AddReadyzChecks(healthz.NamedCheck("nats", natsChecker(nc))); err != nil {
		return err
	}
	log.Info("serving the delivery API", "natsURL", redactURLs(conn.url), "pid", os.Getpid())
	return s.PrepareRun().RunWithContext(ctx)
}

// ensureServingTLS serves the certificate of the --tls-secret Secret.
func ensureServingTLS(ctx context.Context, o *apiserver.Options, t apiserver.ServingTLS) error {
	if t.Namespace == "" {
		return errors.New("--tls-secret needs --namespace (or POD_NAMESPACE)")
	}
	cfg, err := ctrl.GetConfig()
	if err != nil {
		return fmt.Errorf("--tls-secret: connecting to the cluster: %w", err)
	}
	if t.Core, err = kubernetes.NewForConfig(cfg); err != nil {
		return err
	}
	if t.Dynamic, err = dynamic.NewForConfig(cfg); err != nil {
		return err
	}
	cert, key, err := t.Ensure(ctx)
	if err != nil {
		return err
	}
	return o.UseCertificate(cert, key)
}
