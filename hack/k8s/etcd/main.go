// Command etcd is etcd's own server, built from its Go module because no
// release download is reachable from the machines Herald is built on.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
