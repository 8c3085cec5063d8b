//go:build libvirt

// Package libvirttest is the real-hypervisor test harness: two libvirtd
// hosts on this machine and a prepared guest. Only tests import it (it
// imports testing); it builds with the libvirt tag.
package libvirttest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/usher-vm/usher/nodemgr/libvirt"
)

// Harness is two real libvirt hosts on this machine, started by
// testdata/libvirt/harness.sh: host1 and host2, each a libvirtd in its own
// mount namespace with its own host UUID, so live migration between them
// works. Both run inside the run's own network namespace (NetNS: only lo
// and the bridge br0 at 10.77.0.1/24, no route out), so guests with a NIC
// on br0 reach each other and the lab services (StartLab) and nothing else.
//
// Guests boot the prepared kernel and busybox initramfs, whose /init
// prints "USHER-GUEST-UP <hostname>" and then "tick N" every second on the
// serial console (hostname from the kernel argument usher.hostname=, or a
// NoCloud seed's local-hostname). With ip= on the kernel command line it
// configures eth0 (static or DHCP) and runs dropbear on port 22; with
// root=/dev/vdX it boots that disk instead (see BuildImage). The full
// contract is in harness.sh's header.
type Harness struct {
	Sock1, Sock2 string // libvirtd unix sockets (reachable from the root namespace)
	URI1, URI2   string // qemu+unix:///system?socket=… for each; also usable as MigrationURI
	Kernel       string // guest kernel
	Initrd       string // guest initramfs
	RunDir       string // hosts' folders, pid files; StateDir(1|2) live here
	Cache        string // <repo>/.cache/libvirt (kernel, modules, initramfs, test key, images)
	Script       string // testdata/libvirt/harness.sh
	NetNS        string // the lab's network namespace (ip netns exec NetNS …)
	// SSHKey is the test ssh key (private half; SSHKey+".pub" the public
	// one). Initramfs guests without a NoCloud seed accept it for root.
	SSHKey string
	// GuestHostKey is the path of the public host key (one line,
	// "ssh-ed25519 …") of every guest booted from Initrd (made when the
	// initramfs is built), for a known_hosts file.
	GuestHostKey string
	// ImageDir is the image store BuildImage filled ("" before).
	ImageDir  string
	watcher   *exec.Cmd     // the watch process (stops the hosts if the tests die)
	watchDone chan struct{} // closed when it has ended
}

// ErrHarnessSkip is returned by SetupHarness when the tests cannot run here
// and CI is not "true" (not root). Under CI=true that is a failure instead.
var ErrHarnessSkip = errors.New("libvirt harness: skipped")

// RepoRoot is the module root (found from this file's location).
func RepoRoot() string {
	_, f, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(f), "..", "..", ".."))
}

// GuestCmdline is the kernel command line for harness guests; the driver
// replaces {name} with the domain name.
const GuestCmdline = "console=ttyS0 quiet usher.hostname={name}"

// SetupHarness installs the packages (if missing), prepares the guest and
// starts both hosts in a fresh run folder. Call Stop when done. A watcher
// process started here stops the hosts if this process dies first (panic,
// go test -timeout). For TestMain; tests use StartHarness.
func SetupHarness() (*Harness, error) {
	root := RepoRoot()
	h := &Harness{Script: filepath.Join(root, "testdata", "libvirt", "harness.sh"), Cache: filepath.Join(root, ".cache", "libvirt")}
	if os.Getuid() != 0 {
		msg := "libvirt harness needs root (system libvirtds in mount and network namespaces); Debian packages: libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 qemu-utils busybox-static iproute2 dnsmasq-base dropbear-bin bind9 bind9-utils bind9-dnsutils socat openssh-client iputils-ping mmdebstrap e2fsprogs genisoimage"
		if os.Getenv("CI") == "true" {
			return nil, errors.New(msg)
		}
		return nil, fmt.Errorf("%w: %s", ErrHarnessSkip, msg)
	}
	if _, err := exec.LookPath("bash"); err != nil {
		return nil, errors.New("libvirt harness: bash not found (Debian package bash)")
	}
	if _, err := h.run(15*time.Minute, "install"); err != nil {
		return nil, err
	}
	out, err := h.run(10*time.Minute, "prepare", h.Cache)
	if err != nil {
		return nil, err
	}
	kv := parseKV(out)
	h.Kernel, h.Initrd, h.SSHKey, h.GuestHostKey = kv["KERNEL"], kv["INITRD"], kv["SSH_KEY"], kv["GUEST_HOST_KEY"]
	if h.Kernel == "" || h.Initrd == "" || h.SSHKey == "" || h.GuestHostKey == "" {
		return nil, fmt.Errorf("libvirt harness: prepare printed no KERNEL/INITRD/SSH_KEY/GUEST_HOST_KEY:\n%s", out)
	}
	// Short path: unix socket paths are limited to 108 bytes.
	h.RunDir, err = os.MkdirTemp("", "usher-lv-")
	if err != nil {
		return nil, err
	}
	// The watcher outlives us in its own session and stops the hosts if we die.
	w := exec.Command("bash", h.Script, "watch", h.RunDir, strconv.Itoa(os.Getpid()), "--remove")
	w.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := w.Start(); err != nil {
		return nil, fmt.Errorf("libvirt harness: watcher: %w", err)
	}
	h.watcher, h.watchDone = w, make(chan struct{})
	go func() { w.Wait(); close(h.watchDone) }() // ended by Stop
	out, err = h.run(3*time.Minute, "start", h.RunDir)
	if err != nil {
		h.Stop()
		return nil, err
	}
	kv = parseKV(out)
	h.Sock1, h.Sock2, h.NetNS = kv["SOCK1"], kv["SOCK2"], kv["NETNS"]
	if h.Sock1 == "" || h.Sock2 == "" || h.NetNS == "" {
		h.Stop()
		return nil, fmt.Errorf("libvirt harness: start printed no SOCK1/SOCK2/NETNS:\n%s", out)
	}
	h.URI1 = "qemu+unix:///system?socket=" + h.Sock1
	h.URI2 = "qemu+unix:///system?socket=" + h.Sock2
	return h, nil
}

// StartHarness is SetupHarness for one test: it skips (not root, CI unset)
// or fails the test, and stops the hosts in t.Cleanup, also when the test
// fails.
func StartHarness(t testing.TB) *Harness {
	t.Helper()
	h, err := SetupHarness()
	if errors.Is(err, ErrHarnessSkip) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := h.Stop(); err != nil {
			t.Error(err)
		}
	})
	return h
}

// Stop stops both hosts (destroying their guests) and the lab services,
// deletes the lab's network namespace and removes RunDir.
func (h *Harness) Stop() error {
	if h.RunDir == "" {
		return nil
	}
	_, err := h.run(2*time.Minute, "stop", h.RunDir)
	if err == nil {
		err = os.RemoveAll(h.RunDir)
	}
	// The watcher sees the hosts stopped within a second or so and ends;
	// it is waited for (and killed if it does not), so nothing of the
	// harness outlives Stop.
	if h.watchDone != nil {
		select {
		case <-h.watchDone:
		case <-time.After(15 * time.Second):
			h.watcher.Process.Kill()
			<-h.watchDone
		}
	}
	return err
}

// StateDir returns (and creates) a state folder for a driver on host n.
func (h *Harness) StateDir(n int) string {
	p := filepath.Join(h.RunDir, fmt.Sprintf("state%d", n))
	os.MkdirAll(p, 0o755)
	return p
}

// Sock returns host n's socket; URI its libvirt URI.
func (h *Harness) Sock(n int) string { return map[int]string{1: h.Sock1, 2: h.Sock2}[n] }
func (h *Harness) URI(n int) string  { return map[int]string{1: h.URI1, 2: h.URI2}[n] }

// Pid is host n's libvirtd pid.
func (h *Harness) Pid(n int) (int, error) {
	b, err := os.ReadFile(filepath.Join(h.RunDir, fmt.Sprintf("host%d.pid", n)))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// KillHost SIGKILLs host n's libvirtd (its QEMUs keep running).
func (h *Harness) KillHost(n int) error {
	_, err := h.run(time.Minute, "kill-host", h.RunDir, strconv.Itoa(n))
	return err
}

// StartHost (re)starts host n's libvirtd and waits until it answers.
func (h *Harness) StartHost(n int) error {
	_, err := h.run(2*time.Minute, "start-host", h.RunDir, strconv.Itoa(n))
	return err
}

// Options returns driver options for host n with the harness guest.
func (h *Harness) Options(n int, node string) libvirt.Options {
	return libvirt.Options{
		Node: node, Socket: h.Sock(n), MigrationURI: h.URI(n), DomainType: "qemu",
		Kernel: h.Kernel, Initrd: h.Initrd, Cmdline: GuestCmdline, StateDir: h.StateDir(n),
		CallTimeout: 30 * time.Second, ShutdownTimeout: 3 * time.Second,
	}
}

// Virsh runs virsh against host n (bounded to 60s) and returns its
// trimmed standard output; errors carry standard error.
func (h *Harness) Virsh(n int, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "virsh", append([]string{"-q", "-c", h.URI(n)}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return strings.TrimSpace(out.String()), fmt.Errorf("virsh %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return strings.TrimSpace(out.String()), nil
}

func (h *Harness) run(timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := h.command(ctx, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("libvirt harness %s: %w\n%s", strings.Join(args, " "), err, errb.String())
	}
	return out.String(), nil
}

// command is harness.sh with args in its own process group: when ctx
// ends, the whole group is killed (not only bash), and Wait gives up on
// output pipes a leftover child may hold after a grace period.
func (h *Harness) command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "bash", append([]string{h.Script}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

func parseKV(s string) map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(s, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), "="); ok {
			m[k] = v
		}
	}
	return m
}
