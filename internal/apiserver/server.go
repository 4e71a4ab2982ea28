package apiserver

import (
	"fmt"
	"net"

	"github.com/spf13/pflag"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilerrors "k8s.io/apimachinery/pkg/util/errors"
	openapinamer "k8s.io/apiserver/pkg/endpoints/openapi"
	"k8s.io/apiserver/pkg/registry/rest"
	genericapiserver "k8s.io/apiserver/pkg/server"
	"k8s.io/apiserver/pkg/server/dynamiccertificates"
	genericoptions "k8s.io/apiserver/pkg/server/options"
	utilcompatibility "k8s.io/apiserver/pkg/util/compatibility"

	v1 "github.com/herald-dev/herald/api/delivery/v1alpha1"
	"github.com/herald-dev/herald/internal/apiserver/openapi"
	"github.com/herald-dev/herald/internal/deliverylog"
)

// Options are the server's flags: serving, and the delegated
// authentication and authorization, as every aggregated API server has
// them (metrics-server's are the model).
type Options struct {
	SecureServing  *genericoptions.SecureServingOptionsWithLoopback
	Authentication *genericoptions.DelegatingAuthenticationOptions
	Authorization  *genericoptions.DelegatingAuthorizationOptions
	Features       *genericoptions.FeatureOptions
}

// NewOptions are the defaults: port 6443, a self-signed certificate when
// none is given, authentication and authorization by the cluster found
// in-cluster (or through --authentication-kubeconfig).
func NewOptions() *Options {
	o := &Options{
		SecureServing:  genericoptions.NewSecureServingOptions().WithLoopback(),
		Authentication: genericoptions.NewDelegatingAuthenticationOptions(),
		Authorization:  genericoptions.NewDelegatingAuthorizationOptions(),
		Features:       genericoptions.NewFeatureOptions(),
	}
	o.SecureServing.BindPort = 6443
	// kube-apiserver already applies priority and fairness to the
	// requests it proxies here; a second layer would need its own client.
	o.Features.EnablePriorityAndFairness = false
	return o
}

// AddFlags adds the options' flags to fs.
func (o *Options) AddFlags(fs *pflag.FlagSet) {
	o.SecureServing.AddFlags(fs)
	o.Authentication.AddFlags(fs)
	o.Authorization.AddFlags(fs)
	o.Features.AddFlags(fs)
}

// Validate checks the flags.
func (o *Options) Validate() error {
	var errs []error
	errs = append(errs, o.SecureServing.Validate()...)
	errs = append(errs, o.Authentication.Validate()...)
	errs = append(errs, o.Authorization.Validate()...)
	errs = append(errs, o.Features.Validate()...)
	return utilerrors.NewAggregate(errs)
}

// config is the generic server's configuration from the options.
func (o *Options) config() (*genericapiserver.Config, error) {
	if o.SecureServing.ServerCert.GeneratedCert == nil {
		if err := o.SecureServing.MaybeDefaultWithSelfSignedCerts("localhost", nil, []net.IP{net.ParseIP("127.0.0.1")}); err != nil {
			return nil, fmt.Errorf("creating a self-signed certificate: %w", err)
		}
	}
	cfg := genericapiserver.NewConfig(Codecs)
	if err := o.SecureServing.ApplyTo(&cfg.SecureServing, &cfg.LoopbackClientConfig); err != nil {
		return nil, fmt.Errorf("serving: %w", err)
	}
	if err := o.Authentication.ApplyTo(&cfg.Authentication, cfg.SecureServing, nil); err != nil {
		return nil, fmt.Errorf("delegated authentication: %w", err)
	}
	if err := o.Authorization.ApplyTo(&cfg.Authorization); err != nil {
		return nil, fmt.Errorf("delegated authorization: %w", err)
	}
	if err := o.Features.ApplyTo(cfg, nil, nil); err != nil {
		return nil, fmt.Errorf("features: %w", err)
	}
	cfg.EffectiveVersion = utilcompatibility.DefaultBuildEffectiveVersion()
	namer := openapinamer.NewDefinitionNamer(Scheme)
	cfg.OpenAPIConfig = genericapiserver.DefaultOpenAPIConfig(openapi.GetOpenAPIDefinitions, namer)
	cfg.OpenAPIConfig.Info.Title, cfg.OpenAPIConfig.Info.Version = "Herald delivery API", v1.SchemeGroupVersion.Version
	cfg.OpenAPIV3Config = genericapiserver.DefaultOpenAPIV3Config(openapi.GetOpenAPIDefinitions, namer)
	cfg.OpenAPIV3Config.Info.Title, cfg.OpenAPIV3Config.Info.Version = "Herald delivery API", v1.SchemeGroupVersion.Version
	return cfg, nil
}

// UseCertificate serves certPEM and keyPEM (from ServingTLS, or a test's
// CA) instead of --tls-cert-file or a self-signed certificate.
func (o *Options) UseCertificate(certPEM, keyPEM []byte) error {
	c, err := dynamiccertificates.NewStaticCertKeyContent("serving", certPEM, keyPEM)
	if err != nil {
		return fmt.Errorf("loading the serving certificate: %w", err)
	}
	o.SecureServing.ServerCert.GeneratedCert = c
	return nil
}

// New is the delivery API server, answering from r.
func New(o *Options, r *deliverylog.Reader) (*genericapiserver.GenericAPIServer, error) {
	cfg, err := o.config()
	if err != nil {
		return nil, err
	}
	s, err := cfg.Complete(nil).New("herald-apiserver", genericapiserver.NewEmptyDelegate())
	if err != nil {
		return nil, fmt.Errorf("creating the API server: %w", err)
	}
	info := genericapiserver.NewDefaultAPIGroupInfo(v1.GroupName, Scheme, metav1.ParameterCodec, Codecs)
	b := base{r: r}
	info.VersionedResourcesStorageMap[v1.SchemeGroupVersion.Version] = map[string]rest.Storage{
		"webhookdeliveries": &deliveries{b},
		"deadletters":       &deadLetters{b},
		"deliverysummaries": &summaries{b},
	}
	if err := s.InstallAPIGroup(&info); err != nil {
		return nil, fmt.Errorf("installing %s: %w", v1.GroupName, err)
	}
	return s, nil
}
