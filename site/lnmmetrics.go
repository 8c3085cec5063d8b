package site

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/usher-vm/usher/api"
	"github.com/usher-vm/usher/nodemgr"
)

// lnmMetrics serves an LNM's Prometheus metrics over HTTPS (the LNM's
// certificate): its driver's call latencies (nodemgr.Instrument) and its
// node's usage, read at each scrape.
type lnmMetrics struct {
	ln    net.Listener
	tls   *tls.Config
	token string
	reg   *prometheus.Registry
	calls *prometheus.HistogramVec
	node  *nodemgr.LNM
}

func newLNMMetrics(addr, cert, key, tokenFile string) (*lnmMetrics, error) {
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		return nil, fmt.Errorf("lnm.metrics_listen: %w", err)
	}
	m := &lnmMetrics{tls: &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{pair}},
		reg: prometheus.NewRegistry(),
		calls: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "usher_lnm_driver_call_duration_seconds",
			Help:    "Time of each call of the LNM into its VMM driver, by call and outcome (ok, error).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10)}, []string{"call", "outcome"})}
	if tokenFile != "" {
		b, err := os.ReadFile(tokenFile)
		if err != nil {
			return nil, fmt.Errorf("lnm.metrics_token_file: %w", err)
		}
		if m.token = strings.TrimSpace(string(b)); m.token == "" {
			return nil, fmt.Errorf("lnm.metrics_token_file %s is empty", tokenFile)
		}
	}
	m.reg.MustRegister(m.calls, &nodeCollector{m}, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if m.ln, err = net.Listen("tcp", addr); err != nil {
		return nil, fmt.Errorf("lnm.metrics_listen: %w", err)
	}
	return m, nil
}

func (m *lnmMetrics) observe(call string, took time.Duration, err error) {
	outcome := "ok"
	if err != nil {
		outcome = "error"
	}
	m.calls.WithLabelValues(call, outcome).Observe(took.Seconds())
}

// serve serves /metrics until ctx ends.
func (m *lnmMetrics) serve(ctx context.Context) {
	h := promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		if m.token != "" {
			got, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			if subtle.ConstantTimeCompare([]byte(got), []byte(m.token)) != 1 {
				http.Error(w, "unauthorized: send the lnm.metrics_token_file token as a bearer token", http.StatusUnauthorized)
				return
			}
		}
		h.ServeHTTP(w, r)
	})
	srv := &http.Server{Handler: mux, TLSConfig: m.tls, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(tls.NewListener(m.ln, m.tls)) }()
	select {
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		srv.Shutdown(sctx)
		cancel()
		<-errc
	case <-errc:
	}
}

// nodeCollector reads the node's usage at scrape time.
type nodeCollector struct{ m *lnmMetrics }

var (
	nodeCPU    = prometheus.NewDesc("usher_lnm_node_cpu_cores", "The node's CPU use in cores, as 1/5/15-minute averages.", []string{"window"}, nil)
	nodeMem    = prometheus.NewDesc("usher_lnm_node_memory_bytes", "Memory the node's guests use, as 1/5/15-minute averages.", []string{"window"}, nil)
	nodeGuests = prometheus.NewDesc("usher_lnm_guests", "Guests on the node.", nil, nil)
	nodeConn   = prometheus.NewDesc("usher_lnm_connected", "1 while the LNM is registered with its controller.", nil, nil)
)

func (c *nodeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- nodeCPU
	ch <- nodeMem
	ch <- nodeGuests
	ch <- nodeConn
}

func (c *nodeCollector) Collect(ch chan<- prometheus.Metric) {
	l := c.m.node
	if l == nil {
		return
	}
	conn := 0.0
	if l.Connected() {
		conn = 1
	}
	ch <- prometheus.MustNewConstMetric(nodeConn, prometheus.GaugeValue, conn)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := l.NodeStatus(ctx)
	if err != nil {
		return
	}
	ch <- prometheus.MustNewConstMetric(nodeGuests, prometheus.GaugeValue, float64(st.VMs))
	for w, v := range map[string]api.Avg{"cpu": st.Usage.CPU, "mem": st.Usage.MemBytes} {
		d := nodeCPU
		if w == "mem" {
			d = nodeMem
		}
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v.M1, "1m")
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v.M5, "5m")
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v.M15, "15m")
	}
}
