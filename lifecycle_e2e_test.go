package usher

// Node lifecycle end to end, with the controller and simulated LNMs as
// separate processes of the real binary (the chaos harness): drain under
// load with a node lost mid-way, restore, and failover behind a fencing
// command that succeeds, fails and hangs.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/usher-vm/usher/api"
	"github.com/usher-vm/usher/client"
	"github.com/usher-vm/usher/internal/waitfor"
)

func lnmRecord(t testing.TB, cl *client.Client, name string) *api.LNM {
	t.Helper()
	return retry(t, "list_lnms", func(ctx context.Context) (*api.LNM, error) {
		ls, err := cl.ListLNMs(ctx, []string{name}, false)
		if err != nil {
			return nil, err
		}
		for _, l := range ls {
			if l.Info.Name == name {
				return l, nil
			}
		}
		return nil, fmt.Errorf("no LNM %s", name)
	})
}

// waitLNM polls node name's record until ok accepts it.
func waitLNM(t testing.TB, cl *client.Client, name, what string, d time.Duration, ok func(*api.LNM) bool) *api.LNM {
	t.Helper()
	var last *api.LNM
	waitfor.Error(t, d, what, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		ls, err := cl.ListLNMs(ctx, []string{name}, false)
		if err != nil {
			return err
		}
		for _, l := range ls {
			if l.Info.Name == name {
				last = l
				if ok(l) {
					return nil
				}
				return fmt.Errorf("%s is %s/%s, %d VMs, notice %q", name, l.State, l.Mode, l.Status.VMs, l.Notice)
			}
		}
		return fmt.Errorf("no LNM %s", name)
	})
	return last
}

// onlyOnce checks the ground truth: every VM the controller lists exists
// on exactly one simulated hypervisor, the one the controller says, and no
// hypervisor holds a VM the controller does not list.
func onlyOnce(t *testing.T, c *chaos, lr *api.ListReply) {
	t.Helper()
	truth := c.simVMs("sim")
	listed := map[string]bool{}
	for _, v := range lr.VMs {
		listed[v.Name] = true
		if nodes := truth[v.Name]; len(nodes) != 1 || nodes[0] != v.LNM {
			t.Errorf("%s: the controller says %s, the hypervisors hold it on %v", v.Name, v.LNM, nodes)
		}
	}
	for name, nodes := range truth {
		if !listed[name] {
			t.Errorf("%s runs on %v but the controller does not list it", name, nodes)
		}
	}
}

// TestDrainUnderLoad: n1 with 200 VMs is drained (max 8 moves a tick) while
// bob starts VMs without pause; n3, a target, is killed a quarter of the
// way and restarted, then n1 itself half-way: no start lands on n1, every
// VM ends running exactly once elsewhere, n1 reaches maintenance (kept
// across a controller restart), and after restore new VMs go there.
func TestDrainUnderLoad(t *testing.T) {
	c := newChaos(t)
	c.writeControllerConf(siteOptions{controller: "max_request_vms = 100000", enable: []string{"drain"},
		policy: `watch = false
[policy.config.drain]
interval = "200ms"
max_parallel = 8`})
	c.startController()
	for i := 1; i <= 4; i++ {
		c.startLNM(fmt.Sprintf("n%d", i))
	}
	root, alice, bob := c.client("root"), c.client("alice"), c.client("bob")
	waitLNMs(t, root, 4)
	ctx := context.Background()
	res := retry(t, "start 200", func(ctx context.Context) (*api.Result, error) {
		return alice.Start(ctx, api.StartArgs{Cluster: "big", Count: 200, LNMs: []string{"n1"}, ID: "big-200"})
	})
	if res == nil || res.OK() != 200 {
		t.Fatalf("start: %+v", res)
	}
	for _, d := range res.Done {
		if d.LNM != "n1" {
			t.Fatalf("%s started on %s", d.Name, d.LNM)
		}
	}

	l, err := root.SetLNMMode(ctx, "n1", api.ModeDraining, "kernel update")
	if err != nil || l.Mode != api.ModeDraining {
		t.Fatalf("drain: %v %+v", err, l)
	}
	// bob's load, from the moment n1 drains: one start after another
	// until the drain is over.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var onN1 []string
	// The VMs bob was told started. Starts a node's death interrupted (or
	// whose answer the load's deadline cut off) may have left VMs recorded
	// lost, then missing when the node came back without them.
	started := map[string]bool{}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			r, err := bob.Start(sctx, api.StartArgs{Cluster: "load", Count: 2, ID: fmt.Sprintf("load-%d", i)})
			cancel()
			if err != nil {
				continue
			}
			mu.Lock()
			for _, d := range r.Done {
				if d.LNM == "n1" {
					onN1 = append(onN1, d.Name)
				}
				if d.OK {
					started[d.Name] = true
				}
			}
			mu.Unlock()
		}
	}()

	if _, err := alice.SetLNMMode(ctx, "n2", api.ModeDraining, ""); err == nil {
		t.Fatal("a user drained a node")
	}
	// Progress is visible while it runs.
	mid := waitLNM(t, root, "n1", "n1 a quarter drained", 120*time.Second, func(l *api.LNM) bool { return l.Status.VMs <= 150 })
	if mid.Mode != api.ModeDraining || mid.ModeReason != "kernel update" || mid.ModeBy != "root" || !strings.HasPrefix(mid.Notice, "draining: ") {
		t.Fatalf("n1 mid-drain: %+v", mid)
	}
	// A target is lost mid-way, and comes back.
	c.kill9("n3")
	waitLNM(t, root, "n3", "n3 seen lost", 60*time.Second, func(l *api.LNM) bool { return l.State != api.LNMConnected })
	c.startLNM("n3")
	// Then the draining node itself, with migrations from it in flight:
	// its VMs are lost until it is back, and the drain goes on.
	waitLNM(t, root, "n1", "n1 half drained", 120*time.Second, func(l *api.LNM) bool { return l.Status.VMs <= 100 })
	c.kill9("n1")
	waitLNM(t, root, "n1", "n1 seen lost", 60*time.Second, func(l *api.LNM) bool {
		return l.State != api.LNMConnected && strings.Contains(l.Notice, "disconnected")
	})
	c.startLNM("n1")

	final := waitLNM(t, root, "n1", "n1 in maintenance", 300*time.Second, func(l *api.LNM) bool { return l.Mode == api.ModeMaintenance })
	if final.Status.VMs != 0 {
		t.Fatalf("n1 in maintenance with %d VMs", final.Status.VMs)
	}
	close(stop)
	wg.Wait()
	mu.Lock()
	if len(onN1) > 0 {
		t.Errorf("starts placed on the draining node: %v", onN1)
	}
	if len(started) == 0 {
		t.Error("the start load started nothing")
	}
	mu.Unlock()
	waitLNMs(t, root, 4)
	// Every VM alice had and every VM bob was told started runs, none on
	// n1; anything else of bob's is running or missing.
	var lr *api.ListReply
	waitfor.Error(t, 180*time.Second, "every VM running off n1", func() error {
		if _, lr = snapshot(t, root); lr == nil {
			return fmt.Errorf("no list")
		}
		must := 0
		var odd []string
		for _, v := range lr.VMs {
			switch {
			case v.LNM == "n1":
				odd = append(odd, v.Name+" on n1 ("+string(v.State)+")")
			case v.State == api.StateRunning:
				if v.Owner == "alice" || started[v.Name] {
					must++
				}
			case v.State == api.StateMissing && v.Owner == "bob" && !started[v.Name]:
			default:
				odd = append(odd, v.Name+" "+string(v.State)+" on "+v.LNM+": "+v.Reason)
			}
		}
		if len(odd) > 0 || must != 200+len(started) {
			return fmt.Errorf("%d of %d VMs that must run do; %d others: %.2000s", must, 200+len(started), len(odd), strings.Join(odd, "; "))
		}
		return nil
	})
	// A VM whose start a dying node interrupted was never reported
	// started to bob; it is missing, on no hypervisor, and forgetting it
	// is all that is left.
	var gone []string
	for _, v := range lr.Missing {
		gone = append(gone, v.Name)
		if nodes := c.simVMs("sim")[v.Name]; len(nodes) > 0 {
			t.Errorf("%s is missing but runs on %v", v.Name, nodes)
		}
	}
	if len(gone) > 0 {
		t.Logf("starts interrupted by n3's death: %d (%v)", len(gone), gone)
		if r, err := client.Do(ctx, bob, api.MForget, api.ForgetArgs{VMs: gone}); err != nil || r.OK() != len(gone) {
			t.Fatalf("forget: %v %+v", err, r)
		}
		_, lr = waitState(t, root, 30*time.Second, allRunning(len(lr.VMs)-len(gone)))
	}
	onlyOnce(t, c, lr)
	if n := len(lr.Conflicts) + len(lr.Unmanaged); n != 0 {
		t.Fatalf("conflicts and unmanaged after the drain: %d", n)
	}

	// The mode survives a controller restart.
	c.kill9("controller")
	c.startController()
	waitLNMs(t, root, 4)
	if l := lnmRecord(t, root, "n1"); l.Mode != api.ModeMaintenance || l.ModeReason != "kernel update" {
		t.Fatalf("n1 after a controller restart: %+v", l)
	}

	// Restored, it takes new VMs again.
	if l := retry(t, "restore", func(ctx context.Context) (*api.LNM, error) {
		return root.SetLNMMode(ctx, "n1", api.ModeActive, "")
	}); l == nil || l.Mode != api.ModeActive {
		t.Fatalf("restore: %+v", l)
	}
	r := retry(t, "start on n1", func(ctx context.Context) (*api.Result, error) {
		return bob.Start(ctx, api.StartArgs{Cluster: "back", Count: 2, LNMs: []string{"n1"}, ID: "back"})
	})
	if r == nil || r.OK() != 2 || r.Done[0].LNM != "n1" || r.Done[1].LNM != "n1" {
		t.Fatalf("start on the restored node: %+v", r)
	}
}

// TestFailoverBehindFencing: f1's LNM dies with 12 VMs. While the fencing
// command fails, and while it hangs past controller.fence_timeout, nothing
// is restarted; once it confirms, failover.lua restarts all 12 on f2, once
// each; when f1 comes back with its old guests they are destroyed there.
func TestFailoverBehindFencing(t *testing.T) {
	c := newChaos(t)
	modeFile := filepath.Join(c.dir, "fence-mode")
	attempts := filepath.Join(c.dir, "fence-attempts")
	os.WriteFile(modeFile, []byte("fail"), 0o644)
	script := c.write("fence.sh", fmt.Sprintf(`#!/bin/sh
mode=$(cat %q)
echo "$1 $mode" >> %q
case "$mode" in
ok) echo "power off $1: confirmed"; exit 0 ;;
hang) exec sleep 60 ;;
*) echo "ipmi $1: connection refused"; exit 1 ;;
esac
`, modeFile, attempts))
	c.writeControllerConf(siteOptions{enable: []string{"failover"},
		controller: fmt.Sprintf("max_request_vms = 100000\nfence_command = [\"/bin/sh\", %q, \"{node}\"]\nfence_timeout = \"1s\"", script),
		policy: `watch = false
[policy.config.failover]
interval = "200ms"
grace = "1s"
retry = "300ms"`})
	c.startController()
	c.startLNM("f1")
	c.startLNM("f2")
	root, alice := c.client("root"), c.client("alice")
	waitLNMs(t, root, 2)
	res := retry(t, "start", func(ctx context.Context) (*api.Result, error) {
		return alice.Start(ctx, api.StartArgs{Cluster: "ha", Count: 12, LNMs: []string{"f1"}, ID: "ha"})
	})
	if res == nil || res.OK() != 12 {
		t.Fatalf("start: %+v", res)
	}
	c.kill9("f1")
	countAttempts := func(mode string) int {
		b, _ := os.ReadFile(attempts)
		return strings.Count(string(b), "f1 "+mode+"\n")
	}
	nothingRestarted := func(why string) {
		t.Helper()
		_, lr := snapshot(t, root)
		if lr == nil {
			t.Fatalf("%s: no list", why)
		}
		for _, v := range lr.VMs {
			if v.LNM != "f1" || v.State != api.StateLost {
				t.Fatalf("%s: %s is %s on %s", why, v.Name, v.State, v.LNM)
			}
		}
		truth := c.simVMs("sim")
		if len(truth) != 12 {
			t.Fatalf("%s: the hypervisors hold %d VMs", why, len(truth))
		}
		for name, nodes := range truth {
			if len(nodes) != 1 || nodes[0] != "f1" {
				t.Fatalf("%s: %s on %v", why, name, nodes)
			}
		}
	}
	waitfor.True(t, 60*time.Second, "two failed fences", func() bool { return countAttempts("fail") >= 2 })
	nothingRestarted("fence failing")
	if l := lnmRecord(t, root, "f1"); l.Fenced || !strings.Contains(l.Notice, "connection refused") {
		t.Fatalf("f1 after failed fences: %+v", l)
	}
	os.WriteFile(modeFile, []byte("hang"), 0o644)
	// A second hanging attempt means the first was given up.
	waitfor.True(t, 60*time.Second, "two hung fences", func() bool { return countAttempts("hang") >= 2 })
	nothingRestarted("fence hanging")
	os.WriteFile(modeFile, []byte("ok"), 0o644)
	_, lr := waitState(t, root, 60*time.Second, func(keys []vmKey, lr *api.ListReply) bool {
		if !allRunning(12)(keys, lr) {
			return false
		}
		for _, k := range keys {
			if k.LNM != "f2" {
				return false
			}
		}
		return true
	})
	if l := lnmRecord(t, root, "f1"); !l.Fenced {
		t.Fatalf("f1 not marked fenced: %+v", l)
	}
	// The old guests still sit in f1's hypervisor (the test's fence powers
	// nothing off): when f1 comes back they are destroyed, not adopted.
	c.startLNM("f1")
	waitLNMs(t, root, 2)
	waitfor.True(t, 60*time.Second, "f1's stale guests destroyed", func() bool {
		for _, nodes := range c.simVMs("sim") {
			if len(nodes) != 1 || nodes[0] != "f2" {
				return false
			}
		}
		return true
	})
	_, lr = waitState(t, root, 30*time.Second, allRunning(12))
	onlyOnce(t, c, lr)
	if len(lr.Conflicts)+len(lr.Unmanaged) != 0 {
		t.Fatalf("conflicts %v, unmanaged %v", lr.Conflicts, lr.Unmanaged)
	}
	if l := lnmRecord(t, root, "f1"); l.Fenced || !strings.Contains(l.Notice, "12 stale") {
		t.Fatalf("f1 back: %+v", l)
	}
}

// TestReservationsHoldAndExpire: r1 (8 vCPUs, 8 GiB) holds half for alice
// until a few seconds from now: bob gets only the other half; alice's VMs
// under the reservation fit in it; she may extend it within policy, not
// beyond; when it ends her VMs are shut down (reservations.lua) and bob
// gets the room.
func TestReservationsHoldAndExpire(t *testing.T) {
	c := newChaos(t)
	c.writeControllerConf(siteOptions{enable: []string{"reservations"}, policy: `watch = false
[policy.config.reservations]
interval = "500ms"
max_length = "1m"`})
	c.startController()
	c.startLNMConf("r1", c.lnmConfSized("r1", c.addr, 8, 8192))
	root, alice, bob := c.client("root"), c.client("alice"), c.client("bob")
	waitLNMs(t, root, 1)
	ctx := context.Background()
	end := time.Now().Add(15 * time.Second).UTC().Format(time.RFC3339)
	rep, err := root.Reservations(ctx, api.ReservationsArgs{Action: api.ResCreate, User: "alice", MemMB: 4096, VCPUs: 4, LNMs: []string{"r1"}, End: end})
	if err != nil || len(rep.Reservations) != 1 {
		t.Fatalf("create: %v %+v", err, rep)
	}
	id := rep.Reservations[0].ID
	if _, err := alice.Reservations(ctx, api.ReservationsArgs{Action: api.ResCreate, User: "alice", MemMB: 1, LNMs: []string{"r1"}, For: "1h"}); err == nil {
		t.Fatal("a user created a reservation")
	}
	// bob: only the half that is not held.
	r, err := bob.Start(ctx, api.StartArgs{Cluster: "b", Count: 6, MemMB: 1024, VCPUs: 1})
	if err != nil || r.OK() != 4 || len(r.Dropped) != 2 {
		t.Fatalf("bob's six VMs: %v %+v", err, r)
	}
	// alice: her four fit in the reservation, a fifth does not.
	r, err = alice.Start(ctx, api.StartArgs{Cluster: "job", Count: 5, MemMB: 1024, VCPUs: 1, Args: api.StringMap{"reservation": id}})
	if err != nil || r.OK() != 4 || len(r.Dropped) != 1 || !strings.Contains(r.Dropped[0].Reason, "full") {
		t.Fatalf("alice's five VMs: %v %+v", err, r)
	}
	var jobs []string
	for _, d := range r.Done {
		jobs = append(jobs, d.Name)
		if v := d.VM; v == nil || v.Data[api.DataReservation] != id || v.Data[api.DataReservationEnd] == "" {
			t.Fatalf("%s: %+v", d.Name, v)
		}
	}
	// Extending: within max_length yes, beyond no.
	if _, err := alice.Reservations(ctx, api.ReservationsArgs{Action: api.ResExtend, ID: id, For: "2m"}); err == nil || !strings.Contains(err.Error(), "max_length") {
		t.Fatalf("extension beyond policy: %v", err)
	}
	rep, err = alice.Reservations(ctx, api.ReservationsArgs{Action: api.ResExtend, ID: id, For: "2s"})
	if err != nil || rep.Reservations[0].End.Format(time.RFC3339) == end {
		t.Fatalf("extension: %v %+v", err, rep)
	}
	// It ends: alice's VMs are shut down, the room is bob's.
	waitState(t, root, 90*time.Second, func(keys []vmKey, lr *api.ListReply) bool {
		n := 0
		for _, v := range lr.VMs {
			if v.Owner == "alice" && v.State == api.StateShutoff {
				n++
			}
		}
		return n == len(jobs)
	})
	if got, _ := alice.Reservations(ctx, api.ReservationsArgs{Action: api.ResList}); len(got.Reservations) != 1 || got.Reservations[0].State != api.ResEnded {
		t.Fatalf("after the end: %+v", got)
	}
	r, err = bob.Start(ctx, api.StartArgs{Cluster: "c", Count: 4, MemMB: 1024, VCPUs: 1})
	if err != nil || r.OK() != 4 {
		t.Fatalf("bob after the reservation: %v %+v", err, r)
	}
}
