// Command herd-chaos is the chaos suite's helper: "herd-chaos cleanup"
// removes what an interrupted run left behind (node processes, network
// namespaces, the bridge and veth links, data dirs). The runs themselves
// are go test -run TestChaos (make chaos).
package main

import (
	"fmt"
	"os"

	"github.com/herdcluster/herd/cluster-test/chaos"
)

const usage = `usage: herd-chaos cleanup

cleanup  kill the node processes of every chaos run, delete their network
         namespaces (hchaos-*), links (hc*br, hc*v*) and data dirs
         (/tmp/hchaos-*). Run it when no chaos run is active.

The suite itself: make chaos (every fault) or make chaos-smoke.`

func main() {
	if len(os.Args) != 2 || os.Args[1] != "cleanup" {
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}
	if err := chaos.CheckRoot(); err != nil {
		fmt.Fprintln(os.Stderr, "herd-chaos:", err)
		os.Exit(1)
	}
	removed, err := chaos.Cleanup("")
	for _, r := range removed {
		fmt.Println("removed", r)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "herd-chaos:", err)
		os.Exit(1)
	}
	if len(removed) == 0 {
		fmt.Println("nothing to clean up")
	}
}
