package controller

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/herald-dev/herald/internal/natsauth"
)

func TestDispatcherArgsCarryEgressRanges(t *testing.T) {
	base := []string{"dispatcher", "--namespace=a", "--nats-url=nats://n:4222", "--metrics-bind-address=:8080", "--health-probe-bind-address=:8081"}
	if got := dispatcherArgs("a", DispatcherConfig{NATSURL: "nats://n:4222"}); !slices.Equal(got, base) {
		t.Errorf("without egress ranges: %q", got)
	}
	cfg := DispatcherConfig{NATSURL: "nats://n:4222",
		EgressAllow: []netip.Prefix{netip.MustParsePrefix("10.214.0.0/24"), netip.MustParsePrefix("10.215.0.0/24")},
		EgressDeny:  []netip.Prefix{netip.MustParsePrefix("100.96.0.0/11")}}
	want := append(base, "--egress-allow=10.214.0.0/24,10.215.0.0/24", "--egress-deny=100.96.0.0/11")
	if got := dispatcherArgs("a", cfg); !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}

// TestDispatcherArgsNATSIdentityAndTLS: the token and the CA are files the
// pod mounts; the arguments carry only their paths and the server name.
func TestDispatcherArgsNATSIdentityAndTLS(t *testing.T) {
	const pem = "-----BEGIN CERTIFICATE-----\nMIIBsecretish\n-----END CERTIFICATE-----\n"
	for _, tc := range []struct {
		name string
		cfg  DispatcherConfig
		want []string
	}{
		{"token", DispatcherConfig{NATSTokenAuth: true}, []string{"--nats-token-file=/var/run/secrets/herald.dev/nats/token"}},
		{"CA", DispatcherConfig{NATSCA: []byte(pem)}, []string{"--nats-ca-file=/etc/herald/nats-ca/ca.crt"}},
		{"server name", DispatcherConfig{NATSServerName: "nats.nats.svc"}, []string{"--nats-server-name=nats.nats.svc"}},
		{"all", DispatcherConfig{NATSTokenAuth: true, NATSCA: []byte(pem), NATSServerName: "nats.nats.svc"}, []string{
			"--nats-token-file=/var/run/secrets/herald.dev/nats/token", "--nats-ca-file=/etc/herald/nats-ca/ca.crt", "--nats-server-name=nats.nats.svc"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.NATSURL = "nats://n:4222"
			want := slices.Concat([]string{"dispatcher", "--namespace=a", "--nats-url=nats://n:4222"}, tc.want,
				[]string{"--metrics-bind-address=:8080", "--health-probe-bind-address=:8081"})
			got := dispatcherArgs("a", tc.cfg)
			if !slices.Equal(got, want) {
				t.Errorf("got %q, want %q", got, want)
			}
			for _, a := range got {
				if strings.Contains(a, "BEGIN") || strings.Contains(a, "secretish") {
					t.Errorf("CA material in the argument %q", a)
				}
			}
		})
	}
}

// TestDispatcherNATSVolumes: the token is a projected ServiceAccount token
// for NATS's audience, the CA a ConfigMap, both read-only; neither when
// not configured.
func TestDispatcherNATSVolumes(t *testing.T) {
	if vols, mounts := natsVolumes(DispatcherConfig{}); len(vols) != 0 || len(mounts) != 0 {
		t.Errorf("volumes %d, mounts %d without token auth or a CA", len(vols), len(mounts))
	}
	for _, tc := range []struct {
		cfg              DispatcherConfig
		audience, cmName string
	}{
		{DispatcherConfig{NATSTokenAuth: true, NATSCA: []byte("ca")}, natsauth.DefaultAudience, DefaultNATSCAConfigMap},
		{DispatcherConfig{NATSTokenAuth: true, NATSCA: []byte("ca"), NATSAudience: "nats.example", NATSCAConfigMap: "nats-ca"}, "nats.example", "nats-ca"},
	} {
		vols, mounts := natsVolumes(tc.cfg)
		if len(vols) != 2 || len(mounts) != 2 {
			t.Fatalf("volumes %d, mounts %d, want 2 and 2", len(vols), len(mounts))
		}
		tok := vols[0].Projected.Sources[0].ServiceAccountToken
		if *vols[0].Name != "nats-token" || *tok.Audience != tc.audience || *tok.ExpirationSeconds != 3600 || *tok.Path != "token" {
			t.Errorf("token volume %s: audience %s, expiry %d, path %s", *vols[0].Name, *tok.Audience, *tok.ExpirationSeconds, *tok.Path)
		}
		if cm := vols[1].ConfigMap; *vols[1].Name != "nats-ca" || *cm.Name != tc.cmName || *cm.Items[0].Key != "ca.crt" {
			t.Errorf("CA volume %s: ConfigMap %s, key %s", *vols[1].Name, *cm.Name, *cm.Items[0].Key)
		}
		for i, want := range []string{"/var/run/secrets/herald.dev/nats", "/etc/herald/nats-ca"} {
			if *mounts[i].MountPath != want || !*mounts[i].ReadOnly {
				t.Errorf("mount %s at %s, read-only %v; want %s, read-only", *mounts[i].Name, *mounts[i].MountPath, *mounts[i].ReadOnly, want)
			}
		}
		ca := dispatcherNATSCA("a", nil, tc.cfg)
		if *ca.Name != tc.cmName || ca.Data["ca.crt"] != "ca" || ca.Labels[managedByLabel] != managedByValue {
			t.Errorf("CA ConfigMap %s, data %v, labels %v", *ca.Name, ca.Data, ca.Labels)
		}
	}
}
