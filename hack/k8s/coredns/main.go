// Command coredns is CoreDNS with only the plugins the e2e cluster's DNS
// uses (hack/cluster): built from its Go module, because no image can be
// pulled on the machines Herald is built on, and without the cloud
// backends whose SDKs would triple the build.
package main

import (
	"github.com/coredns/coredns/coremain"

	// The plugins of the e2e cluster's Corefile (hack/cluster/manifests).
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

// CoreDNS's own directive list (core/dnsserver) still orders the plugins;
// the names of plugins not linked in are simply never set up.
func main() { coremain.Run() }
