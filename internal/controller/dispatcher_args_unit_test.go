package controller

import (
	"net/netip"
	"slices"
	"testing"
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
