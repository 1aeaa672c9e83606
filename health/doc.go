// Package health runs the health checks of the instances a node owns.
//
// A Runner holds one goroutine per check. Probe checks (http, tcp, grpc)
// run every interval, the first run at a random point in the first half of
// the interval (at most 500 ms in), later runs with a little jitter, so a
// thousand checks declared at once do not fire together; a semaphore bounds
// how many probes run at a time, and each has its timeout. A ttl check
// waits for its service to report (Report) and goes critical when the TTL
// runs out.
//
// Each run's result goes through the check's thresholds (Consul's
// semantics): a passing result resets the failures and, after
// success_before_passing in a row, makes the check passing; a failing one
// resets the successes and, after failures_before_warning in a row, makes
// it warning, after failures_before_critical the status the run reported
// (critical, or warning for an http 429). Only a change of status leaves
// the runner, through OnChange with every check of the instance: the node
// writes that to the registry, one write per change, never per run. The
// latest output, run time and counters stay here (Results).
//
// A check critical for deregister_critical_after makes the runner call
// OnExpire once; the node deregisters the instance.
//
// The package imports only api and grpc's health protocol: it knows
// nothing of the registry, which the node connects it to.
package health
