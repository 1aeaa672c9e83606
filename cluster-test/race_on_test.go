//go:build race

package clustertest

// raceEnabled: the suite runs under -race, so bin/herd is built with it too
// and a data race in a real node fails the run (GORACE exits the node with
// status 66 and the suite sees it).
const raceEnabled = true
