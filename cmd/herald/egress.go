package main

import (
	"flag"

	"github.com/herald-dev/herald/internal/egress"
)

// egressFlags binds --egress-allow and --egress-deny, which `herald
// manager` passes on to the dispatchers it runs.
func egressFlags(fs *flag.FlagSet) *egress.Config {
	var c egress.Config
	fs.Var(egress.PrefixList{P: &c.Allow}, "egress-allow",
		"comma-separated CIDRs (or addresses) webhooks may reach although they are denied; wins over every denied range (make dev allows 127.0.0.0/8)")
	fs.Var(egress.PrefixList{P: &c.Deny}, "egress-deny",
		"comma-separated CIDRs webhooks may not reach, on top of loopback, private, CGNAT, link-local, ULA, multicast and unspecified addresses: the cluster's pod and Service ranges")
	return &c
}
