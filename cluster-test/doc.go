// Package clustertest is herd's black-box suite: it builds bin/herd once,
// starts real node processes on per-test loopback addresses with temporary
// data dirs, drives them through their HTTP API, their gateways and the
// herd CLI exactly as a user would, and checks what they do. It imports no
// herd package but the public wire types in api/.
package clustertest
