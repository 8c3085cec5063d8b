//go:build libvirt

package libvirttest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/usher-vm/usher/internal/waitfor"
)

// DiskBootWait bounds a disk-image guest's boot (kernel, initramfs,
// systemd, sshd) until it accepts ssh logins: generous, for TCG on a shared
// 2-core machine that may be 4× slower than a fast one.
const DiskBootWait = 3 * time.Minute

// Lab is the network of a Harness's run: the namespace both hosts run in,
// its bridge, and the services harness.sh lab-services starts there: BIND
// named (zones Domain and 0.77.10.in-addr.arpa, updated with the TSIG key),
// dnsmasq (DHCP only, for the MACs SetDHCPHosts lists) and a TCP forwarder
// to named from the root namespace's loopback (DNSForward). Test traffic
// goes only to loopback or into the lab: commands that talk to guests run
// inside it (Exec, SSH).
type Lab struct {
	NetNS      string // network namespace (ip netns exec NetNS …)
	Bridge     string // "br0": guests' <interface type='bridge'> source
	Gateway    string // "10.77.0.1": the bridge's address, named, DHCP server, guests' gateway
	Netmask    string // "255.255.255.0"
	Domain     string // the forward zone, e.g. "alice.usher.test"
	DNSForward string // "127.0.0.1:PORT": TCP to named, from the root namespace (RFC 2136 updates)
	TSIGName   string // "usher-key.": the update key's name (hmac-sha256)
	TSIGSecret string // its secret, base64
	// TSIGKeyFile is the key in named's format, for nsupdate -k.
	TSIGKeyFile string
	// ResolvConf is the lab's resolv.conf (nameserver Gateway, search
	// Domain); Exec mounts it on /etc/resolv.conf for the command.
	ResolvConf string
	// DHCPHostsFile is dnsmasq's plan (lines MAC,IP,NAME); SetDHCPHosts
	// writes it.
	DHCPHostsFile string
	SSHKey        string // path of the harness's test key (Harness.SSHKey)
	GuestHostKey  string // path of the initramfs guests' public host key (Harness.GuestHostKey)

	h *Harness
}

// DHCPHost is one line of the lab's DHCP plan: the guest NIC with MAC gets
// IP (and the hostname Name, if set).
type DHCPHost struct {
	MAC, IP, Name string
}

// StartLab starts the lab services for domain (harness.sh lab-services) and
// returns the lab. Calling it again with the same domain returns the same
// lab; another domain is an error. Harness.Stop stops the services.
func (h *Harness) StartLab(domain string) (*Lab, error) {
	out, err := h.run(2*time.Minute, "lab-services", h.RunDir, domain)
	if err != nil {
		return nil, err
	}
	kv := parseKV(out)
	l := &Lab{
		NetNS: kv["NETNS"], Bridge: kv["BRIDGE"], Gateway: kv["GATEWAY"], Netmask: kv["NETMASK"],
		Domain: kv["DOMAIN"], DNSForward: kv["DNS_FORWARD"], TSIGName: kv["TSIG_NAME"],
		TSIGSecret: kv["TSIG_SECRET"], TSIGKeyFile: kv["TSIG_KEY_FILE"], ResolvConf: kv["RESOLV_CONF"],
		DHCPHostsFile: kv["DHCP_HOSTS"], SSHKey: h.SSHKey, GuestHostKey: h.GuestHostKey, h: h,
	}
	for k, v := range map[string]string{"NETNS": l.NetNS, "BRIDGE": l.Bridge, "GATEWAY": l.Gateway,
		"NETMASK": l.Netmask, "DOMAIN": l.Domain, "DNS_FORWARD": l.DNSForward, "TSIG_NAME": l.TSIGName,
		"TSIG_SECRET": l.TSIGSecret, "TSIG_KEY_FILE": l.TSIGKeyFile, "RESOLV_CONF": l.ResolvConf,
		"DHCP_HOSTS": l.DHCPHostsFile} {
		if v == "" {
			return nil, fmt.Errorf("libvirt harness: lab-services printed no %s:\n%s", k, out)
		}
	}
	return l, nil
}

// MustStartLab is StartLab for a test: it fails t on error. The services
// stop with the harness.
func (h *Harness) MustStartLab(t testing.TB, domain string) *Lab {
	t.Helper()
	l, err := h.StartLab(domain)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// BuildImage builds (once; cached in Cache/images until its recipe in
// harness.sh changes) a small Debian 12 disk image and returns the image
// store it is in: debian-small.qcow2 (a qcow2 base: give each VM an
// overlay), debian-small.json (the store's metadata: kernel and initrd
// relative to the store, cmdline "console=ttyS0 root=/dev/vda rw",
// min_mem_mb 256) and the vmlinuz and initramfs.gz it names. The image has
// systemd, systemd-networkd and OpenSSH; the initramfs writes its hostname,
// network and root's authorized_keys (from a NoCloud seed) per VM, and it
// prints the same console markers as the initramfs guest. The first build
// downloads Debian packages (about a minute).
func (h *Harness) BuildImage() (imageDir string, err error) {
	out, err := h.run(15*time.Minute, "image", h.Cache)
	if err != nil {
		return "", err
	}
	dir := parseKV(out)["IMAGE_DIR"]
	if dir == "" {
		return "", fmt.Errorf("libvirt harness: image printed no IMAGE_DIR:\n%s", out)
	}
	h.ImageDir = dir
	return dir, nil
}

// Cmd returns a command that runs args inside the lab (harness.sh
// lab-exec: the lab's network namespace, ResolvConf on /etc/resolv.conf).
// When ctx ends the command's whole process group is killed.
func (l *Lab) Cmd(ctx context.Context, args ...string) *exec.Cmd {
	return l.h.command(ctx, append([]string{"lab-exec", l.h.RunDir}, args...)...)
}

// Exec runs args inside the lab and returns their combined output; the
// error names the command and its exit status.
func (l *Lab) Exec(ctx context.Context, args ...string) (string, error) {
	var out bytes.Buffer
	cmd := l.Cmd(ctx, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("in the lab: %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// SSHArgs is the ssh command line the lab uses: key login as root, no
// host key checks (all guests of one build share a host key), errors only,
// a 10 s connect timeout (it covers the banner exchange too, which a
// loaded TCG guest answers slowly).
func SSHArgs(key, host, command string) []string {
	return []string{"ssh", "-i", key, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
		"-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10",
		"root@" + host, command}
}

// SSH runs command on host (a name in the lab's DNS or an address) as root
// with the private key at key, from inside the lab, and returns its
// trimmed standard output; the error carries ssh's standard error.
func (l *Lab) SSH(ctx context.Context, key, host, command string) (string, error) {
	var out, errb bytes.Buffer
	cmd := l.Cmd(ctx, SSHArgs(key, host, command)...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return strings.TrimSpace(out.String()), fmt.Errorf("ssh root@%s %q: %w: %s", host, command, err, strings.TrimSpace(errb.String()))
	}
	return strings.TrimSpace(out.String()), nil
}

// WaitSSH waits (up to DiskBootWait) until "ssh root@host hostname" with
// key prints want.
func (l *Lab) WaitSSH(t testing.TB, key, host, want string) {
	t.Helper()
	l.WaitSSHWithin(t, DiskBootWait, key, host, want)
}

// WaitSSHWithin is WaitSSH with its own limit (BootWait suits initramfs
// guests).
func (l *Lab) WaitSSHWithin(t testing.TB, limit time.Duration, key, host, want string) {
	t.Helper()
	waitfor.Error(t, limit, fmt.Sprintf("ssh root@%s hostname to print %q", host, want), func() error {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		got, err := l.SSH(ctx, key, host, "hostname")
		if err == nil && got != want {
			err = fmt.Errorf("it printed %q", got)
		}
		return err
	})
}

// SetDHCPHosts replaces the lab's DHCP plan with hosts and makes dnsmasq
// read it again (SIGHUP). A MAC not in the plan gets no lease.
func (l *Lab) SetDHCPHosts(hosts []DHCPHost) error {
	var b strings.Builder
	for _, d := range hosts {
		if d.MAC == "" || d.IP == "" || strings.ContainsAny(d.MAC+d.IP+d.Name, ",\n ") {
			return fmt.Errorf("bad DHCP host %+v", d)
		}
		b.WriteString(d.MAC + "," + d.IP)
		if d.Name != "" {
			b.WriteString("," + d.Name)
		}
		b.WriteString("\n")
	}
	tmp := filepath.Join(filepath.Dir(l.DHCPHostsFile), ".dhcp-hosts.tmp")
	if err := os.WriteFile(tmp, []byte(b.String()), 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, l.DHCPHostsFile); err != nil {
		return err
	}
	_, err := l.h.run(time.Minute, "lab-dhcp-reload", l.h.RunDir)
	return err
}

// Dig asks the lab's named (at Gateway, from inside the lab) for name's
// records of type qtype (A when none is given; "PTR" takes an address, as
// dig -x does) and returns the answers (dig +short), nil when there are
// none.
func (l *Lab) Dig(ctx context.Context, name string, qtype ...string) ([]string, error) {
	args := []string{"dig", "+short", "+time=2", "+tries=2", "@" + l.Gateway}
	switch {
	case len(qtype) == 0:
		args = append(args, name, "A")
	case len(qtype) == 1 && qtype[0] == "PTR":
		args = append(args, "-x", name)
	case len(qtype) == 1:
		args = append(args, name, qtype[0])
	default:
		return nil, errors.New("Dig: one query type at most")
	}
	var out, errb bytes.Buffer
	cmd := l.Cmd(ctx, args...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("%s: %w: %s %s", strings.Join(args, " "), err, strings.TrimSpace(out.String()), strings.TrimSpace(errb.String()))
	}
	var answers []string
	for _, line := range strings.Split(out.String(), "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		if strings.HasPrefix(line, ";") {
			return nil, fmt.Errorf("%s: %s", strings.Join(args, " "), strings.TrimSpace(out.String()))
		}
		answers = append(answers, line)
	}
	return answers, nil
}

// NewKey makes a fresh ed25519 key pair dir/name and dir/name.pub (with
// ssh-keygen, Debian package openssh-client) and returns the private
// key's path.
func NewKey(t testing.TB, dir, name string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", p).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen (Debian package openssh-client): %v: %s", err, out)
	}
	return p
}
