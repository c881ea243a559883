// etcd for the tests in tests/cluster, built by ../build.sh from the pinned go.etcd.io/etcd/server/v3
// module (the same code path as the upstream `etcd` binary: its main.go is this call).
// A module of its own so that etcd's dependency versions do not meet Kubernetes'.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
