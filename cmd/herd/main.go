// Command herd runs a herd node (`herd agent`) and talks to one (`herd
// members`, `herd services`, `herd version`).
package main

import (
	"fmt"
	"os"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	if err := newRootCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "herd: error:", err)
		os.Exit(1)
	}
}
