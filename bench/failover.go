package bench

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/usher-vm/usher/ha"
	"github.com/usher-vm/usher/transport"
)

// haSite is the highly available form of a bench site: an embedded etcd
// member (the usher binary's `etcd` command) and two controllers, ctl-a
// and ctl-b, which the LNMs and clients all know.
type haSite struct {
	obs      *ha.Member // asks etcd who leads
	ctls     []*haCtl
	etcdURL  string
	etcdPeer string
}

type haCtl struct {
	name, addr, conf, pprof string
	cmd                     *exec.Cmd
	done                    chan struct{}
}

const benchPrefix = "/usher/bench/"

// setupHA turns the single controller's configuration conf into ctl-a's
// and ctl-b's (addresses, etcd, lease) and makes e.addr both addresses.
func (e *benchEnv) setupHA(conf string) error {
	pki := filepath.Join(e.dir, "pki")
	ca, err := transport.LoadCA(pki)
	if err != nil {
		return err
	}
	if _, _, err := ca.Issue(transport.RoleController, "etcd0", []string{"127.0.0.1", "localhost"}, pki); err != nil {
		return err
	}
	port := func() (string, error) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", err
		}
		defer ln.Close()
		return ln.Addr().String(), nil
	}
	h := &haSite{}
	if h.etcdURL, err = port(); err != nil {
		return err
	}
	if h.etcdPeer, err = port(); err != nil {
		return err
	}
	h.etcdURL, h.etcdPeer = "https://"+h.etcdURL, "https://"+h.etcdPeer
	addrB, err := port()
	if err != nil {
		return err
	}
	for i, name := range []string{"ctl-a", "ctl-b"} {
		c := &haCtl{name: name, addr: e.addr, pprof: e.o.pprofAddr}
		if i == 1 {
			c.addr = addrB
			if c.pprof != "" {
				if c.pprof, err = port(); err != nil {
					return err
				}
			}
		}
		cc := strings.Replace(conf, fmt.Sprintf("listen = %q", e.addr), fmt.Sprintf(
			"listen = %q\nadvertise = %q\nid = %q\netcd = [%q]\netcd_prefix = %q\netcd_ttl = %q", c.addr, c.addr, name, h.etcdURL, benchPrefix, e.o.etcdTTL.String()), 1)
		cc = strings.Replace(cc, fmt.Sprintf("state_dir = %q", filepath.Join(e.dir, "ctl")), fmt.Sprintf("state_dir = %q", filepath.Join(e.dir, name)), 1)
		if e.o.pprofAddr != "" {
			cc = strings.Replace(cc, fmt.Sprintf("pprof = %q", e.o.pprofAddr), fmt.Sprintf("pprof = %q", c.pprof), 1)
		}
		c.conf = filepath.Join(e.dir, name+".toml")
		if err := os.WriteFile(c.conf, []byte(cc), 0o600); err != nil {
			return err
		}
		h.ctls = append(h.ctls, c)
	}
	tlsCfg, err := ha.ClientTLS(filepath.Join(pki, "ctl.crt"), filepath.Join(pki, "ctl.key"), filepath.Join(pki, "ca.crt"))
	if err != nil {
		return err
	}
	if h.obs, err = ha.New(ha.Config{Endpoints: []string{h.etcdURL}, TLS: tlsCfg, Prefix: benchPrefix, ID: "bench", Address: "-"}); err != nil {
		return err
	}
	e.ha = h
	e.addr = h.ctls[0].addr + "," + h.ctls[1].addr
	return nil
}

// startHA starts the etcd member, then ctl-a, which leads once elected,
// then ctl-b, which stands by.
func (e *benchEnv) startHA(ctx context.Context) error {
	h := e.ha
	pki := filepath.Join(e.dir, "pki")
	_, done, err := e.startProc("etcd", []string{"etcd", "--name", "e0", "--data-dir", filepath.Join(e.dir, "etcd"),
		"--client-url", h.etcdURL, "--peer-url", h.etcdPeer, "--initial-cluster", "e0=" + h.etcdPeer, "--cluster-token", "bench",
		"--cert-file", filepath.Join(pki, "etcd0.crt"), "--key-file", filepath.Join(pki, "etcd0.key"),
		"--ca-file", filepath.Join(pki, "ca.crt"), "--allowed-cn", "ctl"}, "/dev/null")
	if err != nil {
		return err
	}
	if err := e.waitListening(ctx, strings.TrimPrefix(h.etcdURL, "https://"), done, "etcd"); err != nil {
		return err
	}
	for i, c := range h.ctls {
		if c.cmd, c.done, err = e.startProc(c.name, []string{"controller"}, c.conf); err != nil {
			return err
		}
		if err := e.waitListening(ctx, c.addr, c.done, c.name); err != nil {
			return err
		}
		if i == 0 {
			if _, err := e.leader(ctx, func(l ha.Leader) bool { return l.ID == c.name }); err != nil {
				return err
			}
			e.lead(c)
		}
	}
	return nil
}

// lead makes c the controller the scenario measures.
func (e *benchEnv) lead(c *haCtl) {
	e.ctl, e.ctlDone, e.o.pprofAddr = c.cmd, c.done, c.pprof
}

// leader waits (up to two minutes) until etcd names a leader for which ok
// holds.
func (e *benchEnv) leader(ctx context.Context, ok func(ha.Leader) bool) (ha.Leader, error) {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		l, err := e.ha.obs.CurrentLeader(cctx)
		cancel()
		if err == nil && ok(l) {
			return l, nil
		}
		if time.Now().After(deadline) {
			return l, fmt.Errorf("no leader as expected within 2m (last: %+v, %v); see the controllers' logs in %s", l, err, e.dir)
		}
		select {
		case <-ctx.Done():
			return l, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// ctlNamed is the HA controller called name.
func (e *benchEnv) ctlNamed(name string) *haCtl {
	for _, c := range e.ha.ctls {
		if c.name == name {
			return c
		}
	}
	return nil
}

// benchFailover is the failover scenario: the single controller's
// recovery (kill -9, restart) and then, on a new site of the same size,
// the highly available controllers' (kill -9 of the leader), one after
// the other in one run so that the two can be compared.
func benchFailover(ctx context.Context, o benchOpts, rep *benchReport, out io.Writer) error {
	sub := func(name string) benchOpts {
		so := o
		so.scenario = "recovery"
		if o.dir != "" {
			so.dir = filepath.Join(o.dir, name)
			os.MkdirAll(so.dir, 0o755)
		}
		if o.profile != "" {
			so.profile = o.profile + "." + name
		}
		return so
	}
	restart := *rep
	restart.Scenario = "recovery (single controller, restarted)"
	fmt.Fprintf(out, "== the single controller: kill -9 and restart\n")
	if err := benchSite(ctx, sub("restart"), &restart, out); err != nil {
		return fmt.Errorf("restart: %w", err)
	}
	fmt.Fprintf(out, "== two controllers over etcd: kill -9 the leader\n")
	fo := sub("failover")
	fo.ha = true
	if err := benchSite(ctx, fo, rep, out); err != nil {
		return fmt.Errorf("failover: %w", err)
	}
	rep.Scenario = "failover"
	restart.Command, restart.Date = "", ""
	rep.Restart = &restart
	ratio := fmt.Sprintf("failover/restart: state whole %.2f (%.2f s / %.2f s), every client's cache whole %.2f (%.2f s / %.2f s)",
		rep.Seconds/restart.Seconds, rep.Seconds, restart.Seconds, rep.ClientsSeconds/restart.ClientsSeconds, rep.ClientsSeconds, restart.ClientsSeconds)
	rep.Notes = strings.TrimPrefix(rep.Notes+"; "+ratio, "; ")
	rep.Errors += restart.Errors
	return nil
}
