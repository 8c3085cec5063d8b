package usher

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/usher-vm/usher/api"
	"github.com/usher-vm/usher/client"
	"github.com/usher-vm/usher/ha"
	"github.com/usher-vm/usher/internal/waitfor"
)

// cutLink is a TCP path on loopback between a controller and one etcd
// member that the test can cut: while cut, nothing crosses it in either
// direction (bytes sent are lost, as in a network partition; connections
// stay open and new ones are accepted but go nowhere). Healing closes
// the connections that were cut (as their keepalives would) and lets new
// ones through.
type cutLink struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	cut    bool
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
}

func newCutLink(t testing.TB, target string) *cutLink {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &cutLink{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	l.wg.Add(1)
	go l.serve()
	t.Cleanup(l.close)
	return l
}

func (l *cutLink) addr() string { return l.ln.Addr().String() }

func (l *cutLink) serve() {
	defer l.wg.Done()
	for {
		in, err := l.ln.Accept()
		if err != nil {
			return
		}
		l.track(in)
		l.mu.Lock()
		cut := l.cut
		l.mu.Unlock()
		if cut { // accepted, and never answered
			l.wg.Add(1)
			go func() { defer l.wg.Done(); io.Copy(io.Discard, in) }()
			continue
		}
		out, err := net.Dial("tcp", l.target)
		if err != nil {
			in.Close()
			continue
		}
		l.track(out)
		l.wg.Add(2)
		go l.pipe(out, in)
		go l.pipe(in, out)
	}
}

func (l *cutLink) track(c net.Conn) {
	l.mu.Lock()
	l.conns[c] = struct{}{}
	l.mu.Unlock()
}

// pipe copies src to dst, dropping what it reads while the link is cut.
func (l *cutLink) pipe(dst, src net.Conn) {
	defer l.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			l.mu.Lock()
			cut := l.cut
			l.mu.Unlock()
			if !cut {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					src.Close()
					return
				}
			}
		}
		if err != nil {
			dst.Close()
			return
		}
	}
}

func (l *cutLink) setCut(cut bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cut = cut
	if !cut {
		for c := range l.conns {
			c.Close()
		}
		l.conns = map[net.Conn]struct{}{}
	}
}

func (l *cutLink) close() {
	l.ln.Close()
	l.setCut(false)
	l.wg.Wait()
}

var logTime = regexp.MustCompile(`time=(\S+)`)

// logged returns when the first line of the log file containing msg was
// written (zero: none yet).
func logged(file, msg string) time.Time {
	b, _ := os.ReadFile(file)
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, msg) {
			if m := logTime.FindStringSubmatch(line); m != nil {
				t, _ := time.Parse(time.RFC3339Nano, m[1])
				return t
			}
		}
	}
	return time.Time{}
}

// TestHAPartitionedLeaderStopsActing: the network between the leader and
// every etcd member is cut (its LNMs and clients still reach it). The
// leader cannot renew its lease and stops acting before etcd lets
// another lead: its log says it stopped before the new leader's says it
// was elected. The LNMs move to the new leader; a client that reaches
// only the old one is refused; nothing is lost or made twice. Healed, the
// old leader stands by and the site goes on.
func TestHAPartitionedLeaderStopsActing(t *testing.T) {
	c := newChaos(t)
	links := map[string][]*cutLink{}
	eps, both := c.startHAVia(func(ctl string, eps []string) []string {
		var via []string
		for _, ep := range eps {
			l := newCutLink(t, strings.TrimPrefix(ep, "https://"))
			links[ctl] = append(links[ctl], l)
			via = append(via, "https://"+l.addr())
		}
		return via
	}, "n1", "n2")
	root, alice := c.haClient("root", both), c.haClient("alice", both)
	waitLNMs(t, root, 2)
	if res := retry(t, "start", func(ctx context.Context) (*api.Result, error) {
		return alice.Start(ctx, api.StartArgs{Cluster: "p", Count: 4, ID: "p-4"})
	}); res == nil || res.OK() != 4 {
		t.Fatalf("start: %+v", res)
	}
	before, _ := waitState(t, root, 30*time.Second, allRunning(4))
	leader := c.haLeader(eps)
	old := leader()
	// A client that knows only the old leader's address.
	only, err := client.Connect(context.Background(), client.Config{Addr: old.Address, CAFile: filepath.Join(c.dir, "pki", "ca.crt"),
		ServerName: "localhost", User: "alice", Password: "alice-pw", MinBackoff: 50 * time.Millisecond, MaxBackoff: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer only.Close()

	for _, l := range links[old.ID] {
		l.setCut(true)
	}
	var next ha.Leader
	waitfor.True(t, 60*time.Second, "a new leader while the old one is cut off from etcd", func() bool {
		next = leader()
		return next.ID != old.ID && next.Term > old.Term
	})
	oldLog, newLog := filepath.Join(c.dir, old.ID+".log"), filepath.Join(c.dir, next.ID+".log")
	var stopped, elected time.Time
	waitfor.True(t, 30*time.Second, "both logs to tell", func() bool {
		stopped, elected = logged(oldLog, "stopping as leader"), logged(newLog, "elected leader")
		return !stopped.IsZero() && !elected.IsZero()
	})
	if !stopped.Before(elected) {
		t.Fatalf("the old leader stopped acting at %v, after the new one was elected at %v", stopped, elected)
	}
	t.Logf("the old leader stopped %v before the new one was elected", elected.Sub(stopped).Round(time.Millisecond))
	waitLNMs(t, root, 2)
	waitState(t, root, 60*time.Second, allRunning(4))
	// The old leader, still cut off, serves nothing.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	_, err = only.Start(ctx, api.StartArgs{Cluster: "x", Count: 1, ID: "x-1"})
	cancel()
	if err == nil {
		t.Fatal("the partitioned old leader started a VM")
	}
	t.Logf("a client of the partitioned old leader: %v", err)

	for _, l := range links[old.ID] {
		l.setCut(false)
	}
	lr := c.goesOn(alice, root, before, leader, next, "healing")
	for _, v := range lr.VMs {
		if v.Request == "x-1" {
			t.Fatalf("the old leader's refused request made %s", v.Name)
		}
	}
	// The old leader is back as a standby: it sends a client to the leader.
	waitfor.Error(t, 60*time.Second, "the healed old leader to send a client to the leader", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		cl, err := client.Connect(ctx, client.Config{Addr: old.Address, CAFile: filepath.Join(c.dir, "pki", "ca.crt"),
			ServerName: "localhost", User: "alice", Password: "alice-pw"})
		if err != nil {
			return err
		}
		cl.Close()
		return nil
	})
}
