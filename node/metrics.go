package node

import (
	"net/http"

	"github.com/herdcluster/herd/api"
	"github.com/herdcluster/herd/gateway"
	"github.com/herdcluster/herd/gossip"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metricsHandler serves /metrics: etcd's own metrics (etcd registers them
// in the default registry) and the node's, which a collector reads from the
// gateway's, gossip's and the catalog's counters at scrape time, so the
// request path pays nothing for them.
func (n *Node) metricsHandler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(&nodeCollector{n: n})
	return promhttp.HandlerFor(prometheus.Gatherers{prometheus.DefaultGatherer, reg}, promhttp.HandlerOpts{})
}

type nodeCollector struct{ n *Node }

var (
	descAnswers = prometheus.NewDesc("herd_gateway_requests_total",
		"Requests the gateway answered, by service, method class (read: GET, HEAD, OPTIONS; write: the rest) and status class.", []string{"service", "method", "code"}, nil)
	descRetries = prometheus.NewDesc("herd_gateway_retries_total",
		"Requests the gateway sent again to another instance.", []string{"service"}, nil)
	descEjections = prometheus.NewDesc("herd_gateway_ejections_total",
		"Instances ejected by passive outlier detection.", []string{"service"}, nil)
	descUpstreamErrors = prometheus.NewDesc("herd_gateway_upstream_errors_total",
		"Upstream exchanges that failed (connection errors, timeouts, 502/503/504).", []string{"service"}, nil)
	descInflight = prometheus.NewDesc("herd_gateway_inflight_requests",
		"Upstream requests in flight.", []string{"service"}, nil)
	descEjected = prometheus.NewDesc("herd_gateway_ejected_instances",
		"Instances ejected now.", []string{"service"}, nil)
	descMembers = prometheus.NewDesc("herd_gossip_members",
		"Nodes in the gossip view, by status.", []string{"status"}, nil)
	descInstances = prometheus.NewDesc("herd_catalog_instances",
		"Instances in this node's catalog, by service.", []string{"service"}, nil)
	descRole = prometheus.NewDesc("herd_registry_role",
		"1 for this node's registry role (voter, learner, spare).", []string{"role"}, nil)
	descLatency = prometheus.NewDesc("herd_gateway_upstream_latency_seconds",
		"Time from sending a request upstream to its response headers, by service.", []string{"service"}, nil)
	descDuration = prometheus.NewDesc("herd_gateway_request_duration_seconds",
		"Whole-request time through the gateway, from receiving the request to the end of the response body (retries and hedges included; upgraded connections not counted), by service.", []string{"service"}, nil)
	descHedges = prometheus.NewDesc("herd_gateway_hedges_total",
		"Requests also sent to a second instance because the first was slow.", []string{"service"}, nil)
	descHedgesCapped = prometheus.NewDesc("herd_gateway_hedges_capped_total",
		"Requests whose hedge the hedge cap (a tenth of the requests, plus a burst of ten) did not send.", []string{"service"}, nil)
	descRateLimited = prometheus.NewDesc("herd_gateway_rate_limited_total",
		"Requests answered 429 by the per-client rate limit.", nil, nil)
	descRejected = prometheus.NewDesc("herd_gateway_rejected_total",
		"Requests the gateway answered itself without asking an instance, by reason (no_service, unknown_service, no_live_instance, invalid_path, bad_request, body_too_large, rate_limited, overloaded).", []string{"reason"}, nil)
	descUndecryptable = prometheus.NewDesc("herd_gossip_undecryptable_total",
		"Gossip messages dropped because no key of the keyring decrypted them (a stranger's, or a node's that missed a key rotation).", nil, nil)
	descAdmitted = prometheus.NewDesc("herd_join_admitted_total",
		"Nodes this node admitted through the join exchange (issued a certificate).", nil, nil)
	descRenewals = prometheus.NewDesc("herd_tls_renewals_total",
		"Renewals of this node's certificate.", nil, nil)
	descCertExpiry = prometheus.NewDesc("herd_tls_cert_expiry_timestamp_seconds",
		"When this node's certificate expires (Unix time).", nil, nil)
	descACLDenied = prometheus.NewDesc("herd_acl_denied_total",
		"Agent API requests refused by access control, by reason (token_required, invalid_token, unknown_token, token_expired, permission_denied).", []string{"reason"}, nil)
	descACLChanges = prometheus.NewDesc("herd_acl_changes_total",
		"Changes made through the agent API, by action (register, deregister, leave, force_leave, snapshot, join_token_rotate, keyring, acl_token_create, acl_token_revoke, acl_bootstrap, maint_enable, maint_disable, reload).", []string{"action"}, nil)
	descACLTokens = prometheus.NewDesc("herd_acl_tokens",
		"API tokens in this node's token set.", nil, nil)
	descACLSynced = prometheus.NewDesc("herd_acl_synced",
		"1 when this node's token set follows the registry live, 0 when it checks requests against the last set it read.", nil, nil)
	descRelists = prometheus.NewDesc("herd_catalog_relists_total",
		"Times the catalog listed the registry again (its watch revision compacted, the watch broken or silent, the leader lost).", nil, nil)
	descCheckRuns = prometheus.NewDesc("herd_check_runs_total",
		"Health check runs on this node (probes, TTL reports and expiries).", nil, nil)
	descCheckTransitions = prometheus.NewDesc("herd_check_transitions_total",
		"Health check status changes on this node (only these are written to the registry).", nil, nil)
	descChecks = prometheus.NewDesc("herd_checks",
		"Health checks this node runs, by current status.", []string{"status"}, nil)
	descCheckWrites = prometheus.NewDesc("herd_check_status_writes_total",
		"Registry writes of check status changes by this node, by result (ok, failed: tried again).", []string{"result"}, nil)
	descMaint = prometheus.NewDesc("herd_maintenance",
		"This node's maintenance: 1 for scope node when the whole node is in maintenance; for scope service, how many of its services are.", []string{"scope"}, nil)
	descConfigFiles = prometheus.NewDesc("herd_config_files",
		"Service definition files of this node's --config-dir at its last read, by state (ok, error).", []string{"state"}, nil)
	descSynced = prometheus.NewDesc("herd_catalog_synced",
		"1 when the catalog follows the registry live, 0 when it serves its last snapshot.", nil, nil)
)

func (c *nodeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descAnswers, descRetries, descEjections, descUpstreamErrors,
		descInflight, descEjected, descMembers, descInstances, descRole, descSynced, descRelists, descRateLimited, descRejected, descLatency, descDuration, descHedges, descHedgesCapped,
		descUndecryptable, descAdmitted, descRenewals, descCertExpiry, descACLDenied, descACLChanges, descACLTokens, descACLSynced,
		descCheckRuns, descCheckTransitions, descChecks, descCheckWrites, descMaint, descConfigFiles} {
		ch <- d
	}
}

var (
	codeClasses   = [6]string{"other", "1xx", "2xx", "3xx", "4xx", "5xx"}
	methodClasses = [2]string{"read", "write"}
)

func (c *nodeCollector) Collect(ch chan<- prometheus.Metric) {
	n := c.n
	if *n.phase.Load() == "starting" {
		return // the parts below are not all there yet
	}
	if n.gateway != nil {
		ch <- prometheus.MustNewConstMetric(descRateLimited, prometheus.CounterValue, float64(n.gateway.RateLimited()))
		for reason, v := range n.gateway.Rejected() {
			ch <- prometheus.MustNewConstMetric(descRejected, prometheus.CounterValue, float64(v), reason)
		}
		for _, s := range n.gateway.Stats() {
			for m, byCode := range s.Answers {
				for i, v := range byCode {
					if v > 0 {
						ch <- prometheus.MustNewConstMetric(descAnswers, prometheus.CounterValue, float64(v), s.Service, methodClasses[m], codeClasses[i])
					}
				}
			}
			ch <- prometheus.MustNewConstMetric(descRetries, prometheus.CounterValue, float64(s.Retries), s.Service)
			ch <- prometheus.MustNewConstMetric(descEjections, prometheus.CounterValue, float64(s.Ejections), s.Service)
			ch <- prometheus.MustNewConstMetric(descUpstreamErrors, prometheus.CounterValue, float64(s.UpstreamErrors), s.Service)
			ch <- prometheus.MustNewConstMetric(descInflight, prometheus.GaugeValue, float64(s.Inflight), s.Service)
			ch <- prometheus.MustNewConstMetric(descEjected, prometheus.GaugeValue, float64(s.Ejected), s.Service)
			ch <- prometheus.MustNewConstMetric(descHedges, prometheus.CounterValue, float64(s.Hedges), s.Service)
			ch <- prometheus.MustNewConstMetric(descHedgesCapped, prometheus.CounterValue, float64(s.HedgesCapped), s.Service)
			ch <- constHistogram(descLatency, s.Latency, s.Service)
			ch <- constHistogram(descDuration, s.Duration, s.Service)
		}
	}
	counts := map[string]int{}
	for _, g := range n.gossip.Nodes() {
		counts[g.Status]++
	}
	for _, st := range []string{gossip.StatusAlive, gossip.StatusSuspect, gossip.StatusDead, gossip.StatusLeft} {
		ch <- prometheus.MustNewConstMetric(descMembers, prometheus.GaugeValue, float64(counts[st]), st)
	}
	if n.catalog != nil {
		for _, s := range n.catalog.Services() {
			ch <- prometheus.MustNewConstMetric(descInstances, prometheus.GaugeValue, float64(s.Instances), s.Name)
		}
		synced, _ := n.catalog.Synced()
		ch <- prometheus.MustNewConstMetric(descSynced, prometheus.GaugeValue, b2f(synced))
		ch <- prometheus.MustNewConstMetric(descRelists, prometheus.CounterValue, float64(n.catalog.Relists()))
	}
	ch <- prometheus.MustNewConstMetric(descRole, prometheus.GaugeValue, 1, n.role())
	ch <- prometheus.MustNewConstMetric(descUndecryptable, prometheus.CounterValue, float64(n.gossip.Undecryptable()))
	ch <- prometheus.MustNewConstMetric(descAdmitted, prometheus.CounterValue, float64(n.admitted.Load()))
	ch <- prometheus.MustNewConstMetric(descRenewals, prometheus.CounterValue, float64(n.renewals.Load()))
	for i := range n.acls.denied {
		ch <- prometheus.MustNewConstMetric(descACLDenied, prometheus.CounterValue, float64(n.acls.denied[i].Load()), denialReasons[i])
	}
	for i := range n.acls.changes {
		ch <- prometheus.MustNewConstMetric(descACLChanges, prometheus.CounterValue, float64(n.acls.changes[i].Load()), actionNames[i])
	}
	if !n.cfg.Insecure {
		ch <- prometheus.MustNewConstMetric(descACLTokens, prometheus.GaugeValue, float64(n.acls.set.Load().Len()))
		ch <- prometheus.MustNewConstMetric(descACLSynced, prometheus.GaugeValue, b2f(n.acls.synced.Load()))
	}
	c.collectHealth(ch)
	if s := n.store.Load(); s != nil {
		ch <- prometheus.MustNewConstMetric(descCertExpiry, prometheus.GaugeValue, float64(s.Leaf().NotAfter.Unix()))
	}
}

// collectHealth reports the checks, maintenance and --config-dir.
func (c *nodeCollector) collectHealth(ch chan<- prometheus.Metric) {
	n := c.n
	if n.checks != nil {
		runs, transitions := n.checks.runner.Stats()
		ch <- prometheus.MustNewConstMetric(descCheckRuns, prometheus.CounterValue, float64(runs))
		ch <- prometheus.MustNewConstMetric(descCheckTransitions, prometheus.CounterValue, float64(transitions))
		by := n.checks.runner.ByStatus()
		for _, st := range []string{api.HealthPassing, api.HealthWarning, api.HealthCritical} {
			ch <- prometheus.MustNewConstMetric(descChecks, prometheus.GaugeValue, float64(by[st]), st)
		}
		ch <- prometheus.MustNewConstMetric(descCheckWrites, prometheus.CounterValue, float64(n.checks.written.Load()), "ok")
		ch <- prometheus.MustNewConstMetric(descCheckWrites, prometheus.CounterValue, float64(n.checks.failed.Load()), "failed")
	}
	if n.maint != nil {
		m := n.maint.get()
		ch <- prometheus.MustNewConstMetric(descMaint, prometheus.GaugeValue, b2f(m.Node != nil), "node")
		ch <- prometheus.MustNewConstMetric(descMaint, prometheus.GaugeValue, float64(len(m.Services)), "service")
	}
	if n.config != nil {
		ok, bad := n.config.counts()
		ch <- prometheus.MustNewConstMetric(descConfigFiles, prometheus.GaugeValue, float64(ok), "ok")
		ch <- prometheus.MustNewConstMetric(descConfigFiles, prometheus.GaugeValue, float64(bad), "error")
	}
}

// constHistogram is h as a Prometheus histogram with the given labels.
func constHistogram(desc *prometheus.Desc, h gateway.LatencyHistogram, labels ...string) prometheus.Metric {
	buckets := make(map[float64]uint64, len(h.Bounds))
	for i, b := range h.Bounds {
		buckets[b] = h.Cumulative[i]
	}
	return prometheus.MustNewConstHistogram(desc, h.Count, h.Sum, buckets, labels...)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
