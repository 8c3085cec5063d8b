package controller

import (
	"context"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/usher-vm/usher/api"
)

// Metrics are the controller's Prometheus metrics
// (github.com/prometheus/client_golang), served on the HTTP API's
// /metrics to admins (HTTP Basic or a token; Prometheus sends either).
// Request counts and latencies are observed as calls are served
// (core.Config.Observe); the state's sizes, sessions, feeds and the
// policy handlers' figures are read at each scrape.
type Metrics struct {
	reg      *prometheus.Registry
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	logins   *prometheus.CounterVec
}

// NewMetrics makes the registry with Go's and the process's collectors.
func NewMetrics() *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "usher_requests_total",
			Help: "Client calls served, by method and outcome (ok or the error code)."}, []string{"method", "outcome"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "usher_request_duration_seconds",
			Help:    "Time to serve a client call, by method (policy chain and node batches included).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10)}, []string{"method"}),
		logins: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "usher_logins_total",
			Help: "Logins on both links, by outcome (ok, failed, backoff)."}, []string{"outcome"}),
	}
	m.reg.MustRegister(m.requests, m.latency, m.logins,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Observe records one served call (core.Config.Observe).
func (m *Metrics) Observe(method string, took time.Duration, err error) {
	outcome := "ok"
	if err != nil {
		outcome = api.AsError(err).Code
	}
	m.requests.WithLabelValues(method, outcome).Inc()
	m.latency.WithLabelValues(method).Observe(took.Seconds())
}

// login records a login's outcome.
func (m *Metrics) login(outcome string) {
	if m != nil {
		m.logins.WithLabelValues(outcome).Inc()
	}
}

// stateCollector reads the controller's figures at scrape time.
type stateCollector struct {
	s                                      *Server
	vms, nodes, lists, sessions, feeds     *prometheus.Desc
	cuts                                   *prometheus.Desc
	calls, errors, cut, seconds, policyErr *prometheus.Desc
}

func newStateCollector(s *Server) *stateCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, nil)
	}
	return &stateCollector{s: s,
		vms:       d("usher_vms", "VMs in the controller's state, by state.", "state"),
		nodes:     d("usher_nodes", "Known LNMs, by connection state.", "state"),
		lists:     d("usher_vm_list_entries", "Entries of the admins' lists: lost, missing, unmanaged guests and conflicts.", "list"),
		sessions:  d("usher_sessions", "Open sessions on the native link (clients and LNMs)."),
		feeds:     d("usher_event_feeds", "Open event feeds of clients."),
		cuts:      d("usher_event_feed_cuts_total", "Event feeds cut off because their client fell too far behind (the event queue's drops)."),
		calls:     d("usher_policy_handler_calls_total", "Calls of each policy handler.", "script", "event", "handler"),
		errors:    d("usher_policy_handler_errors_total", "Calls of each policy handler that failed.", "script", "event", "handler"),
		cut:       d("usher_policy_handler_cutoffs_total", "Calls of each policy handler cut off at a budget.", "script", "event", "handler"),
		seconds:   d("usher_policy_handler_seconds_total", "Time spent in each policy handler.", "script", "event", "handler"),
		policyErr: d("usher_policy_script_loaded", "1 if the script is loaded, 0 if its last load failed.", "script"),
	}
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.vms, c.nodes, c.lists, c.sessions, c.feeds, c.cuts, c.calls, c.errors, c.cut, c.seconds, c.policyErr} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	counts := c.s.c.State().Counts()
	for _, st := range []api.VMState{api.StatePending, api.StateStarting, api.StateRunning, api.StatePaused, api.StateShutoff,
		api.StateHibernated, api.StateMigrating, api.StateCrashed, api.StateLost, api.StateMissing, api.StateFailed} {
		ch <- prometheus.MustNewConstMetric(c.vms, prometheus.GaugeValue, float64(counts.ByState[st]), string(st))
	}
	ch <- prometheus.MustNewConstMetric(c.nodes, prometheus.GaugeValue, float64(counts.Connected), "connected")
	ch <- prometheus.MustNewConstMetric(c.nodes, prometheus.GaugeValue, float64(counts.LNMs-counts.Connected), "disconnected")
	for list, n := range map[string]int{"lost": counts.Lost, "missing": counts.Missing, "unmanaged": counts.Unmanaged, "conflicts": counts.Conflicts} {
		ch <- prometheus.MustNewConstMetric(c.lists, prometheus.GaugeValue, float64(n), list)
	}
	ch <- prometheus.MustNewConstMetric(c.sessions, prometheus.GaugeValue, float64(c.s.Sessions()))
	ch <- prometheus.MustNewConstMetric(c.feeds, prometheus.GaugeValue, float64(c.s.c.Subscribers()))
	ch <- prometheus.MustNewConstMetric(c.cuts, prometheus.CounterValue, float64(c.s.c.FeedCuts()))
	if c.s.opts.Policy == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	rep, err := c.s.opts.Policy(ctx, api.Identity{User: "usher-metrics", Admin: true}, api.PolicyArgs{Action: "status"})
	if err != nil {
		return
	}
	for _, sc := range rep.Scripts {
		loaded := 0.0
		if sc.Loaded {
			loaded = 1
		}
		ch <- prometheus.MustNewConstMetric(c.policyErr, prometheus.GaugeValue, loaded, sc.Name)
		for _, h := range sc.Handlers {
			l := []string{sc.Name, h.Event, h.Name}
			ch <- prometheus.MustNewConstMetric(c.calls, prometheus.CounterValue, float64(h.Calls), l...)
			ch <- prometheus.MustNewConstMetric(c.errors, prometheus.CounterValue, float64(h.Errors), l...)
			ch <- prometheus.MustNewConstMetric(c.cut, prometheus.CounterValue, float64(h.Cut), l...)
			ch <- prometheus.MustNewConstMetric(c.seconds, prometheus.CounterValue, float64(h.TotalUS)/1e6, l...)
		}
	}
}

// metricsHandler serves /metrics to admins.
func (h *httpAPI) metricsHandler() http.Handler {
	var m *Metrics
	if h.s != nil {
		m = h.s.opts.Metrics
	}
	if m == nil {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			writeError(w, r, api.Errorf(api.ErrNotFound, "this controller keeps no metrics"))
		})
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(newStateCollector(h.s))
	serve := promhttp.HandlerFor(prometheus.Gatherers{m.reg, reg}, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
	return h.authed(func(w http.ResponseWriter, r *http.Request, id api.Identity) error {
		if !id.Admin {
			return api.Errorf(api.ErrForbidden, "metrics are for admins (scrape with an admin's token)")
		}
		serve.ServeHTTP(w, r)
		return nil
	})
}
