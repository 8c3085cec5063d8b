package bench

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/usher-vm/usher/api"

	"golang.org/x/crypto/bcrypt"

	"github.com/usher-vm/usher/client"
	"github.com/usher-vm/usher/ha"
	"github.com/usher-vm/usher/transport"
)

// benchReport is what `usher bench` prints and writes as JSON.
type benchReport struct {
	Scenario       string  `json:"scenario"`
	LNMs           int     `json:"lnms"`
	VMs            int     `json:"vms"`
	Batch          int     `json:"batch"`
	Clients        int     `json:"clients"`
	Seconds        float64 `json:"seconds"`
	ConnectSeconds float64 `json:"connect_seconds"`
	// recovery: from the kill until every client's cache is whole again
	// (clients reload once the controller's state is whole)
	ClientsSeconds float64 `json:"clients_whole_seconds,omitempty"`
	// failover: from the kill until etcd named the new leader
	ElectedSeconds float64 `json:"elected_seconds,omitempty"`
	Requests       int64   `json:"requests"`
	ThroughputPerS float64 `json:"throughput_per_s"`
	P50ms          float64 `json:"p50_ms"`
	P95ms          float64 `json:"p95_ms"`
	P99ms          float64 `json:"p99_ms"`
	// requests, reload: the p99 split into the time from sending to the
	// reply and how late the paced sender was (the machine is shared)
	ServiceP99ms  float64 `json:"service_p99_ms,omitempty"`
	LatenessP99ms float64 `json:"send_lateness_p99_ms,omitempty"`
	// requests with --api both: the HTTP API's figures beside the native
	// ones above, at the same rate in the same run
	HTTPP50ms         float64 `json:"http_p50_ms,omitempty"`
	HTTPP99ms         float64 `json:"http_p99_ms,omitempty"`
	HTTPErrors        int64   `json:"http_errors,omitempty"`
	ControllerCPU     float64 `json:"controller_cpu_seconds"`
	ControllerCPUPct  float64 `json:"controller_cpu_percent"`
	ControllerPeakRSS int64   `json:"controller_peak_rss_bytes"`
	ControllerRSS     int64   `json:"controller_rss_bytes"`
	// The rest of the machine over the same interval: the load-generator
	// processes hosting the LNMs, and this process (the clients).
	GeneratorsCPU float64 `json:"generators_cpu_seconds"`
	ClientsCPU    float64 `json:"clients_cpu_seconds"`
	Errors        int64   `json:"errors"`
	Notes         string  `json:"notes,omitempty"`
	// failover: the single controller's restart measured in the same run
	// (Seconds and ClientsSeconds above are the failover's)
	Restart *benchReport `json:"restart,omitempty"`
	Command string       `json:"command"`
	Date    string       `json:"date"`
}

type benchOpts struct {
	scenario     string
	lnms, vms    int
	batch        int
	clients      int
	duration     time.Duration
	rate         int
	generators   int
	logLevel     string
	jsonFile     string
	keep         bool
	dir          string
	report       time.Duration
	quiet        bool
	profile      string
	genPprofAddr string
	memLimitMB   int
	budget       time.Duration
	heap         string
	pprofAddr    string
	api          string // requests: native, http or both
	httpAddr     string // the controller's HTTP API
	ha           bool   // two controllers over an embedded etcd member
	etcdTTL      time.Duration
}

// Run is `usher bench`: it parses args and runs one scenario. It must run
// inside the usher binary: the controller and load generators it starts are
// that binary's `controller` and `lnm` commands.
func Run(ctx context.Context, args []string, out, errOut io.Writer) error {
	fs := flag.NewFlagSet("usher bench", flag.ContinueOnError)
	fs.SetOutput(errOut)
	const synopsis, description = "--scenario NAME [flags]", `Measures Usher at cluster scale on this machine (loopback only). It starts a
controller process with the shipped authorization, quota and placement
policies, N simulated LNMs hosted by load-generator processes (each LNM with
its own TLS + yamux connection), and M concurrent clients, then runs one
scenario:

  start-storm  start --vms VMs in requests of --batch; the clock runs from the
               first request to the last VM reported running (connecting the
               LNMs is measured on its own line)
  steady       --vms VMs idle while LNMs report every --report-interval:
               controller CPU and RSS over --duration
  recovery     --vms VMs running; kill -9 the controller and restart it: time
               until the state is whole again
  requests     single-VM starts at --rate requests/s for --duration: latency
               (--api http: through the HTTP API; --api both: native, then
               HTTP, at the same rate in one run, with their ratio)
  chain        per-event cost of a chain of five Lua handlers (in process)
  reload       hot-swap a placement script every 500ms under a stream of
               starts: errors must stay 0
  failover     the recovery above, then the same on a highly available site
               (two controllers, an embedded etcd member, LNMs and clients
               knowing both): --vms VMs running, kill -9 the leader: time
               until the standby leads a whole site, beside the restart

It prints a table (throughput, p50/p95/p99, controller CPU seconds, peak RSS,
errors) and, with --json FILE, the same as JSON. All loops are bounded.

Examples:
  usher bench --scenario start-storm --lnms 100 --vms 10000 --batch 100 --clients 4
  usher bench --scenario steady --lnms 100 --vms 1000 --duration 60s --json steady.json
  usher bench --scenario recovery --lnms 1000 --vms 100000
  usher bench --scenario failover --lnms 10000 --vms 1000000 --batch 1000 --generators 4`
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: usher bench %s\n\n%s\n\nFlags:\n", synopsis, description)
		fs.PrintDefaults()
	}
	o := benchOpts{}
	fs.StringVar(&o.scenario, "scenario", "start-storm", "start-storm, steady, recovery, failover, requests, chain or reload")
	fs.DurationVar(&o.etcdTTL, "etcd-ttl", 5*time.Second, "failover: the controllers' leadership lease (controller.etcd_ttl)")
	fs.IntVar(&o.lnms, "lnms", 100, "simulated LNMs")
	fs.IntVar(&o.vms, "vms", 10000, "VMs to start")
	fs.IntVar(&o.batch, "batch", 100, "VMs per start request")
	fs.IntVar(&o.clients, "clients", 4, "concurrent clients")
	fs.DurationVar(&o.duration, "duration", 20*time.Second, "how long steady, requests, chain and reload run")
	fs.IntVar(&o.rate, "rate", 1000, "requests: target requests per second")
	fs.StringVar(&o.api, "api", "native", "requests: native (the Go client), http (the HTTP API) or both, one after the other")
	fs.IntVar(&o.generators, "generators", 2, "load-generator processes hosting the LNMs")
	fs.StringVar(&o.jsonFile, "json", "", "also write the report as JSON to this file")
	fs.BoolVar(&o.keep, "keep", false, "keep the working directory (logs, state) afterwards")
	fs.StringVar(&o.dir, "dir", "", "working directory (default: a new temporary directory)")
	fs.DurationVar(&o.report, "report-interval", 5*time.Second, "how often LNMs report usage")
	fs.BoolVar(&o.quiet, "quiet", false, "no progress lines")
	fs.DurationVar(&o.budget, "budget", time.Second, "the controller's per-handler Lua budget (policy.budget; large batches need more than the 100ms default)")
	fs.IntVar(&o.memLimitMB, "memory-limit-mb", 0, "the controller's controller.memory_limit_mb (0: none)")
	fs.StringVar(&o.logLevel, "log-level", "warn", "log level of the controller and the load generators (debug, info, warn, error; logs in DIR, see --keep)")
	fs.StringVar(&o.heap, "heapprofile", "", "write a heap profile of the controller at the end of the scenario to this file (and the runtime's memory figures and goroutine count to FILE.memstats, the goroutine dump to FILE.goroutines)")
	fs.StringVar(&o.profile, "cpuprofile", "", "start-storm, requests, recovery: write a CPU profile of the controller covering the first --duration of the measured phase (for recovery: of the restarted controller) to this file, one of the first load generator to FILE.lnm, and one of this process (the clients) to FILE.clients")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if o.lnms < 1 || o.lnms > 100000 || o.vms < 0 || o.vms > 10000000 || o.batch < 1 || o.clients < 1 || o.clients > 1000 ||
		o.generators < 1 || o.generators > 64 || o.duration <= 0 || o.duration > time.Hour || o.rate < 1 {
		return fmt.Errorf("flag out of range (see --help)")
	}
	if o.api != "native" && o.api != "http" && o.api != "both" {
		return fmt.Errorf("--api %q: native, http or both", o.api)
	}
	if o.generators > o.lnms {
		o.generators = o.lnms
	}
	rep := &benchReport{Scenario: o.scenario, LNMs: o.lnms, VMs: o.vms, Batch: o.batch, Clients: o.clients,
		Command: "usher bench " + strings.Join(args, " "), Date: time.Now().UTC().Format(time.RFC3339)}
	var err error
	switch o.scenario {
	case "chain":
		err = benchChain(ctx, o, rep, out)
	case "start-storm", "steady", "recovery", "requests", "reload":
		err = benchSite(ctx, o, rep, out)
	case "failover":
		err = benchFailover(ctx, o, rep, out)
	default:
		return fmt.Errorf("unknown scenario %q", o.scenario)
	}
	if err != nil {
		return err
	}
	printReport(out, rep)
	if o.jsonFile != "" {
		b, _ := json.MarshalIndent(rep, "", "  ")
		if err := os.WriteFile(o.jsonFile, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	if rep.Errors > 0 {
		return fmt.Errorf("%d errors", rep.Errors)
	}
	return nil
}

func printReport(w io.Writer, r *benchReport) {
	fmt.Fprintf(w, "\nscenario      %s\n", r.Scenario)
	fmt.Fprintf(w, "lnms / vms    %d / %d (batch %d, clients %d)\n", r.LNMs, r.VMs, r.Batch, r.Clients)
	if r.ConnectSeconds > 0 {
		fmt.Fprintf(w, "connect LNMs  %.2f s\n", r.ConnectSeconds)
	}
	if r.ElectedSeconds > 0 {
		fmt.Fprintf(w, "elected       %.3f s (the standby leads)\n", r.ElectedSeconds)
	}
	fmt.Fprintf(w, "seconds       %.3f\n", r.Seconds)
	if r.ClientsSeconds > 0 {
		fmt.Fprintf(w, "clients whole %.3f s (every client's cache reloaded)\n", r.ClientsSeconds)
	}
	fmt.Fprintf(w, "requests      %d\n", r.Requests)
	fmt.Fprintf(w, "throughput    %.1f /s\n", r.ThroughputPerS)
	fmt.Fprintf(w, "latency       p50 %.3f ms  p95 %.3f ms  p99 %.3f ms\n", r.P50ms, r.P95ms, r.P99ms)
	if r.ServiceP99ms > 0 {
		fmt.Fprintf(w, "  p99 split   from send to reply %.3f ms, sender late by %.3f ms\n", r.ServiceP99ms, r.LatenessP99ms)
	}
	if r.HTTPP50ms > 0 {
		fmt.Fprintf(w, "HTTP API      p50 %.3f ms  p99 %.3f ms (errors %d); HTTP/native p50 %.2f, p99 %.2f\n",
			r.HTTPP50ms, r.HTTPP99ms, r.HTTPErrors, r.HTTPP50ms/max(r.P50ms, 0.001), r.HTTPP99ms/max(r.P99ms, 0.001))
	}
	if r.ControllerPeakRSS > 0 {
		fmt.Fprintf(w, "controller    %.2f CPU s (%.2f%% of a core), RSS %.1f MiB, peak %.1f MiB\n",
			r.ControllerCPU, r.ControllerCPUPct, float64(r.ControllerRSS)/(1<<20), float64(r.ControllerPeakRSS)/(1<<20))
	}
	if r.GeneratorsCPU > 0 || r.ClientsCPU > 0 {
		fmt.Fprintf(w, "rest          load generators %.2f CPU s, clients (this process) %.2f CPU s\n", r.GeneratorsCPU, r.ClientsCPU)
	}
	fmt.Fprintf(w, "errors        %d\n", r.Errors)
	if r.Notes != "" {
		fmt.Fprintf(w, "notes         %s\n", r.Notes)
	}
	if r.Restart != nil {
		fmt.Fprintf(w, "\nbeside it, in the same run:")
		printReport(w, r.Restart)
	}
}

// latencies collects durations from many goroutines.
type latencies struct {
	mu sync.Mutex
	d  []time.Duration
}

func (l *latencies) add(d time.Duration) {
	l.mu.Lock()
	l.d = append(l.d, d)
	l.mu.Unlock()
}

func (l *latencies) fill(r *benchReport) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.d) == 0 {
		return
	}
	sort.Slice(l.d, func(i, j int) bool { return l.d[i] < l.d[j] })
	q := func(p float64) float64 {
		i := int(p * float64(len(l.d)-1))
		return float64(l.d[i].Microseconds()) / 1000
	}
	r.P50ms, r.P95ms, r.P99ms = q(0.50), q(0.95), q(0.99)
}

// procStat reads a process's CPU seconds (user+system) and RSS figures.
func procStat(pid int) (cpu float64, rss, peak int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	fields := strings.Fields(s[i+2:])
	if len(fields) < 13 {
		return 0, 0, 0, errors.New("short /proc stat")
	}
	ut, _ := strconv.ParseFloat(fields[11], 64)
	st, _ := strconv.ParseFloat(fields[12], 64)
	cpu = (ut + st) / 100 // USER_HZ is 100 on Linux
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return cpu, 0, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		kb := func() int64 {
			v, _ := strconv.ParseInt(strings.Fields(line)[1], 10, 64)
			return v * 1024
		}
		switch {
		case strings.HasPrefix(line, "VmRSS:"):
			rss = kb()
		case strings.HasPrefix(line, "VmHWM:"):
			peak = kb()
		}
	}
	return cpu, rss, peak, nil
}

// others reads the CPU seconds so far of the load generators (together)
// and of this process, where the clients run.
func (e *benchEnv) others() (gens, self float64) {
	for _, g := range e.gens {
		if g.Process != nil {
			c, _, _, _ := procStat(g.Process.Pid)
			gens += c
		}
	}
	self, _, _, _ = procStat(os.Getpid())
	return gens, self
}

type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// benchEnv is a site made of real processes.
type benchEnv struct {
	o       benchOpts
	out     io.Writer
	bin     string
	dir     string
	addr    string
	ctlCfg  string
	ctl     *exec.Cmd
	ctlDone chan struct{} // closed when the controller process has exited
	gens    []*exec.Cmd
	// the clients' log, DIR/clients.log
	clientLogOnce sync.Once
	clientLog     *slog.Logger
	users         []string
	procs         []proc // every process started, to stop at the end
	ha            *haSite
	errMu         sync.Mutex
	errMsg        string
	died          error
}

// firstError keeps the first failure for the report.
func (e *benchEnv) firstError(msg string) {
	e.errMu.Lock()
	defer e.errMu.Unlock()
	if e.errMsg == "" {
		e.errMsg = msg
	}
}

func (e *benchEnv) progress(format string, args ...any) {
	if !e.o.quiet {
		fmt.Fprintf(e.out, "[%s] %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
	}
}

func (e *benchEnv) start(name string, args []string, conf string) (*exec.Cmd, error) {
	cmd, _, err := e.startProc(name, args, conf)
	return cmd, err
}

// startProc starts the usher binary as process name (its log DIR/name.log)
// and returns a channel closed when it has exited. A load generator
// (name g…) must never exit on its own: that is recorded for dead.
func (e *benchEnv) startProc(name string, args []string, conf string) (*exec.Cmd, chan struct{}, error) {
	logf, err := os.OpenFile(filepath.Join(e.dir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, nil, err
	}
	cmd := exec.Command(e.bin, args...)
	cmd.Env = append(os.Environ(), "USHER_CONFIG="+conf)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, nil, err
	}
	done := make(chan struct{})
	if name == "controller" {
		e.ctlDone = done
	}
	e.procs = append(e.procs, proc{cmd, done})
	go func() {
		err := cmd.Wait()
		logf.Close()
		close(done)
		if strings.HasPrefix(name, "g") {
			e.errMu.Lock()
			if e.died == nil {
				e.died = fmt.Errorf("%s exited (%v); see %s", name, err, filepath.Join(e.dir, name+".log"))
			}
			e.errMu.Unlock()
		}
	}()
	return cmd, done, nil
}

// dead reports a load generator that exited.
func (e *benchEnv) dead() error {
	e.errMu.Lock()
	defer e.errMu.Unlock()
	return e.died
}

func (e *benchEnv) startController(ctx context.Context) error {
	if e.ha != nil {
		return e.startHA(ctx)
	}
	cmd, err := e.start("controller", []string{"controller"}, e.ctlCfg)
	if err != nil {
		return err
	}
	e.ctl = cmd
	return e.waitListening(ctx, e.addr, e.ctlDone, "controller")
}

// waitListening waits until addr accepts connections (the process of
// name, done when it exits, is serving).
func (e *benchEnv) waitListening(ctx context.Context, addr string, done chan struct{}, name string) error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-done:
			return fmt.Errorf("%s exited; see %s", name, filepath.Join(e.dir, name+".log"))
		default:
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s did not start; see %s", name, filepath.Join(e.dir, name+".log"))
}

func (e *benchEnv) close() {
	// Every process is gone before the next site of the same run starts.
	for _, p := range e.procs {
		p.cmd.Process.Kill()
	}
	for _, p := range e.procs {
		<-p.done
	}
	if e.ha != nil {
		e.ha.obs.Close()
	}
	if !e.o.keep && e.o.dir == "" {
		os.RemoveAll(e.dir)
	} else {
		fmt.Fprintf(e.out, "working directory kept: %s\n", e.dir)
	}
}

func setupBench(ctx context.Context, o benchOpts, out io.Writer) (*benchEnv, error) {
	bin, err := os.Executable()
	if err != nil {
		return nil, err
	}
	dir := o.dir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "usher-bench-"); err != nil {
			return nil, err
		}
	}
	e := &benchEnv{o: o, out: out, bin: bin, dir: dir}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	e.addr = ln.Addr().String()
	ln.Close()
	pki := filepath.Join(dir, "pki")
	ca, err := transport.CreateCA(pki, "bench CA")
	if err != nil {
		return nil, err
	}
	if _, _, err := ca.Issue(transport.RoleController, "ctl", []string{"127.0.0.1", "localhost"}, pki); err != nil {
		return nil, err
	}
	var ht strings.Builder
	for i := 0; i < o.clients; i++ {
		e.users = append(e.users, fmt.Sprintf("bench%d", i+1))
	}
	for _, u := range append(append([]string{}, e.users...), "admin") {
		h, err := bcrypt.GenerateFromPassword([]byte(u+"-pw"), bcrypt.MinCost)
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(&ht, "%s:%s\n", u, h)
	}
	htFile := filepath.Join(dir, "users.htpasswd")
	if err := os.WriteFile(htFile, []byte(ht.String()), 0o600); err != nil {
		return nil, err
	}
	policies := filepath.Join(dir, "policies")
	os.MkdirAll(policies, 0o755)
	e.ctlCfg = filepath.Join(dir, "controller.toml")
	conf := fmt.Sprintf(`[controller]
listen = %q
cert_file = %q
key_file = %q
ca_file = %q
state_dir = %q
report_interval = %q
grace = "60s"
max_streams = 4096
max_request_vms = 1000000
max_per_ip = 100000
max_pending_per_ip = 100000
max_handshaking = 1024

[policy]
enable = ["auth_htpasswd", "authz_owner", "quota", "place_leastloaded"]
budget = %q
dirs = [%q]

[policy.config.auth_htpasswd]
file = %q
admins = ["admin"]

[policy.config.quota]
max_vms = 10000000

[log]
level = %q
`, e.addr, filepath.Join(pki, "ctl.crt"), filepath.Join(pki, "ctl.key"), filepath.Join(pki, "ca.crt"),
		filepath.Join(dir, "ctl"), o.report.String(), o.budget.String(), policies, htFile, o.logLevel)
	if o.memLimitMB > 0 {
		conf = strings.Replace(conf, "[policy]", fmt.Sprintf("memory_limit_mb = %d\n\n[policy]", o.memLimitMB), 1)
	}
	if o.api != "native" {
		hl, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		e.o.httpAddr = hl.Addr().String()
		hl.Close()
		conf = strings.Replace(conf, "[policy]", fmt.Sprintf("http_listen = %q\n\n[policy]", e.o.httpAddr), 1)
	}
	if o.profile != "" || o.heap != "" {
		pl, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		e.o.pprofAddr = pl.Addr().String()
		pl.Close()
		conf = strings.Replace(conf, "[policy]", fmt.Sprintf("pprof = %q\n\n[policy]", e.o.pprofAddr), 1)
	}
	if o.ha {
		if err := e.setupHA(conf); err != nil {
			return nil, err
		}
		return e, nil
	}
	if err := os.WriteFile(e.ctlCfg, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	return e, nil
}

func (e *benchEnv) startGenerators() error {
	per := (e.o.lnms + e.o.generators - 1) / e.o.generators
	left := e.o.lnms
	for g := 0; g < e.o.generators && left > 0; g++ {
		n := per
		if n > left {
			n = left
		}
		left -= n
		prefix := fmt.Sprintf("g%dn", g+1)
		conf := filepath.Join(e.dir, prefix+".toml")
		err := os.WriteFile(conf, []byte(fmt.Sprintf(`[lnm]
name = %q
controller = %q
server_name = "localhost"
ca_file = %q
driver = "sim"
sim_cpus = 100000
sim_mem_mb = 1000000000
recovery_listen = "127.0.0.1:0"
scan_interval = "60s"

%s
[log]
level = %q
`, prefix, e.addr, filepath.Join(e.dir, "pki", "ca.crt"), e.genPprof(g), e.o.logLevel)), 0o600)
		if err != nil {
			return err
		}
		cmd, err := e.start(prefix, []string{"lnm", "--count", strconv.Itoa(n), "--ca-dir", filepath.Join(e.dir, "pki")}, conf)
		if err != nil {
			return err
		}
		e.gens = append(e.gens, cmd)
	}
	return nil
}

func (e *benchEnv) client(ctx context.Context, user string) (*client.Client, error) {
	e.clientLogOnce.Do(func() {
		e.clientLog = slog.New(slog.DiscardHandler)
		if f, err := os.Create(filepath.Join(e.dir, "clients.log")); err == nil {
			e.clientLog = slog.New(slog.NewTextHandler(f, nil)) // reconnects and reloads: a few lines each
		}
	})
	return client.Connect(ctx, client.Config{Addr: e.addr, CAFile: filepath.Join(e.dir, "pki", "ca.crt"), ServerName: "localhost",
		User: user, Password: user + "-pw", MinBackoff: 50 * time.Millisecond, MaxBackoff: time.Second, Logger: e.clientLog.With("user", user)})
}

func counts(ctx context.Context, admin *client.Client) (api.Counts, error) {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	st, err := admin.Status(cctx, api.StatusArgs{})
	return st.Counts, err
}

// waitCounts polls the controller's counts until ok, reporting progress.
func (e *benchEnv) waitCounts(ctx context.Context, admin *client.Client, what string, limit time.Duration, ok func(api.Counts) bool) error {
	deadline := time.Now().Add(limit)
	last := time.Now()
	for {
		c, err := counts(ctx, admin)
		if err == nil && ok(c) {
			return nil
		}
		if time.Since(last) > 2*time.Second {
			extra := ""
			if c.Lost+c.Missing > 0 {
				extra = fmt.Sprintf(", %d lost, %d missing", c.Lost, c.Missing)
			}
			e.progress("%s: %d/%d LNMs connected, %d VMs (%d running%s)", what, c.Connected, c.LNMs, c.VMs, c.Running, extra)
			last = time.Now()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not reached within %v (last: %+v, err %v)", what, limit, c, err)
		}
		if err := e.dead(); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(25 * time.Millisecond):
		}
	}
}

// storm starts total VMs with the clients in requests of batch VMs.
func (e *benchEnv) storm(ctx context.Context, clients []*client.Client, total int, lat *latencies, errs *atomic.Int64, reqs *atomic.Int64) {
	var next atomic.Int64
	var done atomic.Int64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	go func() {
		t := time.NewTicker(2 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				e.progress("started %d / %d VMs", done.Load(), total)
			}
		}
	}()
	for i, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				from := next.Add(int64(e.o.batch)) - int64(e.o.batch)
				if from >= int64(total) {
					return
				}
				n := e.o.batch
				if int(from)+n > total {
					n = total - int(from)
				}
				t0 := time.Now()
				cctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
				r, err := c.Start(cctx, api.StartArgs{Cluster: fmt.Sprintf("s%dc%d", i, from/int64(e.o.batch)%50), Count: n})
				cancel()
				lat.add(time.Since(t0))
				reqs.Add(1)
				if err != nil {
					errs.Add(int64(n))
					e.firstError(err.Error())
					continue
				}
				done.Add(int64(r.OK()))
				errs.Add(int64(n - r.OK()))
				if r.OK() < n {
					for _, d := range r.Done {
						if !d.OK {
							e.firstError(d.Name + ": " + d.Error)
							break
						}
					}
					for _, d := range r.Dropped {
						e.firstError(d.VM + " dropped: " + d.Reason)
						break
					}
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
}

func benchSite(ctx context.Context, o benchOpts, rep *benchReport, out io.Writer) error {
	e, err := setupBench(ctx, o, out)
	if err != nil {
		return err
	}
	defer e.close()
	e.progress("starting controller and %d LNMs in %d load-generator processes (dir %s)", o.lnms, o.generators, e.dir)
	if err := e.startController(ctx); err != nil {
		return err
	}
	t0 := time.Now()
	if err := e.startGenerators(); err != nil {
		return err
	}
	actx, cancel := context.WithTimeout(ctx, 60*time.Second)
	admin, err := e.client(actx, "admin")
	cancel()
	if err != nil {
		return err
	}
	defer admin.Close()
	if err := e.waitCounts(ctx, admin, "connecting LNMs", 10*time.Minute, func(c api.Counts) bool { return c.Connected == o.lnms }); err != nil {
		return err
	}
	rep.ConnectSeconds = time.Since(t0).Seconds()
	e.progress("%d LNMs connected in %.2fs", o.lnms, rep.ConnectSeconds)
	var clients []*client.Client
	for _, u := range e.users {
		cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		c, err := e.client(cctx, u)
		cancel()
		if err != nil {
			return err
		}
		defer c.Close()
		clients = append(clients, c)
	}
	lat := &latencies{}
	var errs, reqs atomic.Int64
	pid := e.ctl.Process.Pid
	var g0, s0 float64 // the other processes' CPU when the measured phase began
	mark := func() { g0, s0 = e.others() }
	mark()
	switch o.scenario {
	case "start-storm":
		cpu0, _, _, _ := procStat(pid)
		mark()
		start := time.Now()
		stopProf := e.startProfile(ctx)
		e.storm(ctx, clients, o.vms, lat, &errs, &reqs)
		stopProf()
		if err := e.waitCounts(ctx, admin, "VMs running", 10*time.Minute, func(c api.Counts) bool { return c.Running >= o.vms-int(errs.Load()) }); err != nil {
			return err
		}
		rep.Seconds = time.Since(start).Seconds()
		cpu1, rss, peak, _ := procStat(pid)
		rep.ControllerCPU, rep.ControllerRSS, rep.ControllerPeakRSS = cpu1-cpu0, rss, peak
		rep.ThroughputPerS = float64(o.vms) / rep.Seconds
	case "steady", "recovery":
		e.progress("starting %d VMs", o.vms)
		e.storm(ctx, clients, o.vms, lat, &errs, &reqs)
		if errs.Load() > 0 {
			e.errMu.Lock()
			defer e.errMu.Unlock()
			return fmt.Errorf("%d VMs failed to start (first error: %s)", errs.Load(), e.errMsg)
		}
		if o.scenario == "steady" {
			e.progress("steady state for %v", o.duration)
			cpu0, _, _, _ := procStat(pid)
			mark()
			select {
			case <-time.After(o.duration):
			case <-ctx.Done():
				return ctx.Err()
			}
			cpu1, rss, peak, _ := procStat(pid)
			rep.Seconds = o.duration.Seconds()
			rep.ControllerCPU, rep.ControllerRSS, rep.ControllerPeakRSS = cpu1-cpu0, rss, peak
			*lat = latencies{}
			rep.Requests = 0
			break
		}
		// What each client's cache holds once the storm's last events have
		// reached it: what it must hold again after the restart.
		want := make([]int, len(clients))
		if err := e.waitCaches(ctx, clients, "clients taking the last events", 10*time.Minute, func(sizes []int) bool {
			total := 0
			for _, n := range sizes {
				total += n
			}
			return total == o.vms
		}); err != nil {
			return err
		}
		for i, c := range clients {
			want[i] = c.CachedCount()
		}
		var start time.Time
		var cpu0 float64
		var elected chan float64
		if e.ha != nil {
			// The leader is killed; nothing is restarted: the standby,
			// running all along, leads.
			old, err := e.leader(ctx, func(ha.Leader) bool { return true })
			if err != nil {
				return err
			}
			var next *haCtl
			for _, c := range e.ha.ctls {
				if c.name != old.ID {
					next = c
				}
			}
			cpu0, _, _, _ = procStat(next.cmd.Process.Pid)
			e.progress("kill -9 the leader %s (pid %d, term %d); %s stands by", old.ID, e.ctlNamed(old.ID).cmd.Process.Pid, old.Term, next.name)
			e.ctlNamed(old.ID).cmd.Process.Signal(syscall.SIGKILL)
			start = time.Now()
			<-e.ctlNamed(old.ID).done
			mark()
			e.lead(next)
			elected = make(chan float64, 1)
			go func() {
				l, err := e.leader(ctx, func(l ha.Leader) bool { return l.Term > old.Term })
				if err == nil {
					e.progress("%s leads in term %d", l.ID, l.Term)
				}
				elected <- time.Since(start).Seconds()
			}()
		} else {
			e.progress("kill -9 controller (pid %d)", pid)
			e.ctl.Process.Signal(syscall.SIGKILL)
			<-e.ctlDone // its port is free once it is gone
			mark()
			start = time.Now()
			if err := e.startController(ctx); err != nil {
				return err
			}
		}
		stopProf := e.startProfile(ctx)
		if err := e.waitCounts(ctx, admin, "rebuilding state", 10*time.Minute, func(c api.Counts) bool {
			return c.Connected == o.lnms && c.VMs == o.vms && c.Lost == 0
		}); err != nil {
			return err
		}
		rep.Seconds = time.Since(start).Seconds()
		if err := e.waitCaches(ctx, clients, "clients reloading", 10*time.Minute, func(sizes []int) bool {
			return slices.Equal(sizes, want)
		}); err != nil {
			return err
		}
		rep.ClientsSeconds = time.Since(start).Seconds()
		stopProf()
		cpu, rss, peak, _ := procStat(e.ctl.Process.Pid)
		rep.ControllerCPU, rep.ControllerRSS, rep.ControllerPeakRSS = cpu-cpu0, rss, peak
		if elected != nil {
			rep.ElectedSeconds = <-elected
		}
		rep.ThroughputPerS = float64(o.vms) / rep.Seconds
		*lat = latencies{}
	case "requests":
		cpu0, _, _, _ := procStat(pid)
		mark()
		stopProf := e.startProfile(ctx)
		if o.api != "http" {
			e.openLoop(ctx, e.nativeStart(clients), lat, rep, &errs, &reqs)
		}
		if o.api != "native" {
			send, err := e.httpStart()
			if err != nil {
				stopProf()
				return err
			}
			if o.api == "http" {
				e.openLoop(ctx, send, lat, rep, &errs, &reqs)
			} else {
				var hlat latencies
				var herrs atomic.Int64
				var hrep benchReport
				e.openLoop(ctx, send, &hlat, &hrep, &herrs, &reqs)
				hlat.fill(&hrep)
				rep.HTTPP50ms, rep.HTTPP99ms, rep.HTTPErrors = hrep.P50ms, hrep.P99ms, herrs.Load()
			}
		}
		cpu1, rss, peak, _ := procStat(pid)
		stopProf()
		rep.Seconds = o.duration.Seconds()
		if o.api == "both" {
			rep.Seconds *= 2
		}
		rep.ControllerCPU, rep.ControllerRSS, rep.ControllerPeakRSS = cpu1-cpu0, rss, peak
		rep.ThroughputPerS = float64(reqs.Load()) / rep.Seconds
	case "reload":
		cpu0, _, _, _ := procStat(pid)
		mark()
		stop := make(chan struct{})
		var swaps atomic.Int64
		go func() {
			t := time.NewTicker(500 * time.Millisecond)
			defer t.Stop()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				case <-t.C:
				}
				src := fmt.Sprintf("-- swap %d\nusher.on(\"start_request\", function(req)\n  for _, vm in ipairs(req.vms) do vm.data = vm.data or {}; vm.data.swap = \"%d\" end\nend, {order = 60, name = \"tag\"})\n", i, i)
				p := filepath.Join(e.dir, "policies", "tag.lua")
				os.WriteFile(p+".tmp", []byte(src), 0o644)
				os.Rename(p+".tmp", p)
				swaps.Add(1)
			}
		}()
		e.o.batch = 1
		e.openLoop(ctx, e.nativeStart(clients), lat, rep, &errs, &reqs)
		close(stop)
		cpu1, rss, peak, _ := procStat(pid)
		rep.Seconds = o.duration.Seconds()
		rep.ControllerCPU, rep.ControllerRSS, rep.ControllerPeakRSS = cpu1-cpu0, rss, peak
		rep.ThroughputPerS = float64(reqs.Load()) / rep.Seconds
		rep.Notes = fmt.Sprintf("%d script swaps during the run", swaps.Load())
	}
	if rep.Seconds > 0 {
		rep.ControllerCPUPct = 100 * rep.ControllerCPU / rep.Seconds
	}
	g1, s1 := e.others()
	rep.GeneratorsCPU, rep.ClientsCPU = g1-g0, s1-s0
	if rep.Requests == 0 {
		rep.Requests = reqs.Load()
	}
	if o.heap != "" && e.o.pprofAddr != "" {
		if resp, err := http.Get("http://" + e.o.pprofAddr + "/debug/pprof/heap?gc=1"); err == nil {
			if f, err := os.Create(o.heap); err == nil {
				io.Copy(f, resp.Body)
				f.Close()
			}
			resp.Body.Close()
		}
		// Where the RSS goes: the runtime's own accounting, from the text
		// form of the heap profile, next to the profile.
		if resp, err := http.Get("http://" + e.o.pprofAddr + "/debug/pprof/heap?debug=1"); err == nil {
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
			resp.Body.Close()
			var stats []string
			for _, line := range strings.Split(string(b), "\n") {
				for _, k := range []string{"# HeapInuse = ", "# HeapIdle = ", "# HeapReleased = ", "# Stack = ", "# Sys = ", "# NumGC = "} {
					if strings.HasPrefix(line, k) {
						stats = append(stats, strings.TrimPrefix(line, "# "))
					}
				}
			}
			os.WriteFile(o.heap+".memstats", []byte(strings.Join(stats, "\n")+"\n"), 0o644)
		}
		if resp, err := http.Get("http://" + e.o.pprofAddr + "/debug/pprof/goroutine?debug=1"); err == nil {
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
			resp.Body.Close()
			os.WriteFile(o.heap+".goroutines", b, 0o644)
			if first, _, ok := strings.Cut(string(b), "\n"); ok {
				f, err := os.OpenFile(o.heap+".memstats", os.O_APPEND|os.O_WRONLY, 0o644)
				if err == nil {
					fmt.Fprintln(f, strings.TrimPrefix(first, "goroutine profile: "))
					f.Close()
				}
			}
		}
	}
	rep.Errors = errs.Load()
	if e.errMsg != "" {
		rep.Notes = strings.TrimPrefix(rep.Notes+"; first error: "+e.errMsg, "; ")
	}
	lat.fill(rep)
	return nil
}

// openLoop issues single-VM starts at o.rate per second for o.duration,
// spread over the clients; latency is measured from the scheduled send time
// so a stalled controller shows up (no coordinated omission).
func (e *benchEnv) openLoop(ctx context.Context, send func(ctx context.Context, i int) bool, lat *latencies, rep *benchReport, errs, reqs *atomic.Int64) {
	var service, lateness latencies
	defer func() {
		var a, b benchReport
		service.fill(&a)
		lateness.fill(&b)
		rep.ServiceP99ms, rep.LatenessP99ms = a.P99ms, b.P99ms
	}()
	interval := time.Second / time.Duration(e.o.rate)
	total := int(e.o.duration / interval)
	sem := make(chan struct{}, 2048)
	var wg sync.WaitGroup
	start := time.Now()
	lastReport := start
	for i := 0; i < total; i++ {
		at := start.Add(time.Duration(i) * interval)
		if d := time.Until(at); d > 0 {
			time.Sleep(d) // pacing the open-loop load generator
		}
		if time.Since(lastReport) > 2*time.Second {
			e.progress("%d / %d requests sent", i, total)
			lastReport = time.Now()
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			cctx, cancel := context.WithTimeout(ctx, time.Minute)
			sent := time.Now()
			ok := send(cctx, i)
			cancel()
			lat.add(time.Since(at))
			service.add(time.Since(sent))
			lateness.add(sent.Sub(at))
			reqs.Add(1)
			if !ok {
				errs.Add(1)
			}
		}()
	}
	wg.Wait()
}

// nativeStart sends request i (a single-VM start) through the Go client.
func (e *benchEnv) nativeStart(clients []*client.Client) func(ctx context.Context, i int) bool {
	return func(ctx context.Context, i int) bool {
		r, err := clients[i%len(clients)].Start(ctx, api.StartArgs{Cluster: fmt.Sprintf("r%d", i%64), Count: 1})
		if err != nil {
			e.firstError(err.Error())
		}
		return err == nil && r.OK() == 1
	}
}

// httpStart sends request i through the HTTP API (HTTP/2 over TLS, Basic
// as the clients' users).
func (e *benchEnv) httpStart() (func(ctx context.Context, i int) bool, error) {
	pem, err := os.ReadFile(filepath.Join(e.dir, "pki", "ca.crt"))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "localhost"},
		ForceAttemptHTTP2: true, MaxIdleConnsPerHost: 64}}
	url := "https://" + e.o.httpAddr + "/api/v1/vms"
	return func(ctx context.Context, i int) bool {
		user := e.users[i%len(e.users)]
		body := fmt.Sprintf(`{"cluster":"h%d","count":1}`, i%64)
		req, err := http.NewRequestWithContext(ctx, "POST", url, strings.NewReader(body))
		if err != nil {
			return false
		}
		req.SetBasicAuth(user, user+"-pw")
		req.Header.Set("Content-Type", "application/json")
		resp, err := hc.Do(req)
		if err != nil {
			e.firstError(err.Error())
			return false
		}
		var r api.Result
		derr := json.NewDecoder(resp.Body).Decode(&r)
		resp.Body.Close()
		if resp.StatusCode != 200 || derr != nil {
			e.firstError(fmt.Sprintf("HTTP %d", resp.StatusCode))
			return false
		}
		return r.OK() == 1
	}, nil
}

// genPprof is the pprof setting of load generator g: with --cpuprofile the
// first generator is profiled too (FILE.lnm), to see the other side of the
// links.
func (e *benchEnv) genPprof(g int) string {
	if g != 0 || e.o.profile == "" {
		return ""
	}
	pl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return ""
	}
	e.o.genPprofAddr = pl.Addr().String()
	pl.Close()
	return fmt.Sprintf("pprof = %q", e.o.genPprofAddr)
}

// waitCaches polls the clients' cache sizes until whole says they are
// complete, showing progress every 2 s (what names the wait) and giving
// up after limit.
func (e *benchEnv) waitCaches(ctx context.Context, clients []*client.Client, what string, limit time.Duration, whole func(sizes []int) bool) error {
	deadline := time.Now().Add(limit)
	last := time.Now()
	sizes := make([]int, len(clients))
	for {
		for i, c := range clients {
			sizes[i] = c.CachedCount()
		}
		if whole(sizes) {
			return nil
		}
		if time.Since(last) >= 2*time.Second {
			e.progress("%s: caches hold %v VMs", what, sizes)
			last = time.Now()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: clients' caches hold %v VMs after %v", what, sizes, limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(25 * time.Millisecond): // polling converging caches
		}
	}
}

// startProfile fetches CPU profiles of the controller (and of the first
// load generator, FILE.lnm, and of this process with the clients,
// FILE.clients) while the measured phase runs; the returned
// func waits for them and writes the files.
func (e *benchEnv) startProfile(ctx context.Context) func() {
	if e.o.profile == "" || e.o.pprofAddr == "" {
		return func() {}
	}
	var wg sync.WaitGroup
	start := time.Now()
	fetch := func(addr, file string) {
		defer wg.Done()
		// The profile covers --duration seconds from the start of the
		// phase. A restarted controller serves pprof once it runs, a
		// moment after its process started: try for a few seconds.
		var resp *http.Response
		var err error
		for try := 0; ; try++ {
			resp, err = http.Get(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", addr, int(e.o.duration.Seconds())))
			if err == nil || try == 250 || ctx.Err() != nil {
				break
			}
			time.Sleep(20 * time.Millisecond) // the listener is not up yet
		}
		if err != nil {
			e.progress("profile: %v", err)
			return
		}
		defer resp.Body.Close()
		f, err := os.Create(file)
		if err != nil {
			e.progress("profile: %v", err)
			return
		}
		io.Copy(f, resp.Body)
		f.Close()
	}
	wg.Add(1)
	go fetch(e.o.pprofAddr, e.o.profile)
	if e.o.genPprofAddr != "" {
		wg.Add(1)
		go fetch(e.o.genPprofAddr, e.o.profile+".lnm")
	}
	// This process runs the clients: FILE.clients.
	wg.Add(1)
	go func() {
		defer wg.Done()
		f, err := os.Create(e.o.profile + ".clients")
		if err != nil {
			e.progress("profile: %v", err)
			return
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			e.progress("profile of the clients: %v", err)
			return
		}
		select {
		case <-time.After(e.o.duration):
		case <-ctx.Done():
		}
		pprof.StopCPUProfile()
	}()
	return func() {
		e.progress("waiting for the %v CPU profiles (started %v ago)", e.o.duration, time.Since(start).Round(time.Second))
		wg.Wait()
	}
}
