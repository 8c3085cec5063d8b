//go:build site

package sitetest

// Harness for the site integration tests: real OpenLDAP slapd and BIND
// named started as ordinary processes on loopback with configs in temp
// dirs (testdata/site/harness.sh does the same by hand). Every process
// started here is stopped by its pid in t.Cleanup, also when the test
// fails.

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/usher-vm/usher/internal/waitfor"
)

// siteTools maps each command the tests need to its Debian package.
var siteTools = map[string]string{
	"slapd": "slapd", "ldapadd": "ldap-utils", "ldapsearch": "ldap-utils",
	"named": "bind9", "dig": "bind9-dnsutils",
}

func findTool(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, d := range []string{"/usr/sbin", "/sbin"} {
		if p := filepath.Join(d, name); fileExists(p) {
			return p
		}
	}
	return ""
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// requireSiteTools never skips: missing tools are installed when running
// as root (testdata/site/harness.sh install), otherwise the test fails
// naming the Debian packages.
func requireSiteTools(t *testing.T) {
	t.Helper()
	missing := func() []string {
		seen := map[string]bool{}
		var pk []string
		for tool, pkg := range siteTools {
			if findTool(tool) == "" && !seen[pkg] {
				seen[pkg] = true
				pk = append(pk, pkg)
			}
		}
		return pk
	}
	pk := missing()
	if len(pk) == 0 {
		return
	}
	if os.Geteuid() != 0 {
		t.Fatalf("site tests need the Debian packages %s (apt-get install -y --no-install-recommends %s); not root, cannot install them",
			strings.Join(pk, " "), strings.Join(pk, " "))
	}
	out, err := exec.Command("bash", filepath.Join(repoRoot, "testdata", "site", "harness.sh"), "install").CombinedOutput()
	if pk2 := missing(); err != nil || len(pk2) > 0 {
		t.Fatalf("installing Debian packages %s failed: %v\n%s", strings.Join(pk, " "), err, out)
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	for i := 0; i < 20; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		// named also needs the UDP port
		u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			u.Close()
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}

// startProc starts cmd and registers its stop (SIGTERM, then SIGKILL, by pid).
func startProc(t *testing.T, name string, cmd *exec.Cmd, logf string) (*exec.Cmd, chan struct{}) {
	t.Helper()
	lf, err := os.Create(logf)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); lf.Close(); close(done) }()
	t.Cleanup(func() { stopProc(cmd, done) })
	t.Logf("%s started, pid %d (log %s)", name, cmd.Process.Pid, logf)
	return cmd, done
}

func stopProc(cmd *exec.Cmd, done chan struct{}) {
	select {
	case <-done:
		return
	default:
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		cmd.Process.Kill()
		<-done
	}
}

// waitPort waits until what listens on addr; failing, it shows logf.
func waitPort(t *testing.T, addr string, what string, logf string) {
	t.Helper()
	err := waitfor.Poll(t.Context(), 15*time.Second, func() error {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
		}
		return err
	})
	if err != nil {
		b, _ := os.ReadFile(logf)
		t.Fatalf("%s did not listen on %s: %v\n%s", what, addr, err, b)
	}
}

// slapd is a running OpenLDAP server.
type slapd struct {
	URL, Base, RootDN, RootPW string
	cmd                       *exec.Cmd
	done                      chan struct{}
}

const siteBase = "dc=usher,dc=test"

func startSlapd(t *testing.T) *slapd {
	t.Helper()
	requireSiteTools(t)
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "db"), 0o700); err != nil {
		t.Fatal(err)
	}
	s := &slapd{Base: siteBase, RootDN: "cn=admin," + siteBase, RootPW: "adminpw"}
	conf := fmt.Sprintf(`include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile %[1]s/slapd.pid
database mdb
maxsize 104857600
suffix "%[2]s"
rootdn "%[3]s"
rootpw %[4]s
directory %[1]s/db
access to attrs=userPassword by self write by anonymous auth by * none
access to * by * read
`, dir, s.Base, s.RootDN, s.RootPW)
	cf := filepath.Join(dir, "slapd.conf")
	if err := os.WriteFile(cf, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	s.URL = fmt.Sprintf("ldap://127.0.0.1:%d", port)
	logf := filepath.Join(dir, "slapd.log")
	s.cmd, s.done = startProc(t, "slapd", exec.Command(findTool("slapd"), "-f", cf, "-h", s.URL+"/", "-d", "0"), logf)
	waitPort(t, fmt.Sprintf("127.0.0.1:%d", port), "slapd", logf)
	s.add(t, fmt.Sprintf(`dn: %[1]s
objectClass: dcObject
objectClass: organization
o: usher test
dc: usher

dn: ou=people,%[1]s
objectClass: organizationalUnit
ou: people

dn: ou=groups,%[1]s
objectClass: organizationalUnit
ou: groups
`, s.Base))
	return s
}

// add runs ldapadd as the root DN.
func (s *slapd) add(t *testing.T, ldif string) {
	t.Helper()
	cmd := exec.Command(findTool("ldapadd"), "-x", "-H", s.URL, "-D", s.RootDN, "-w", s.RootPW)
	cmd.Stdin = strings.NewReader(ldif)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ldapadd: %v\n%s", err, out)
	}
}

// search runs ldapsearch (anonymous, LDIF output without wrapping).
func (s *slapd) search(t *testing.T, base, filter string, attrs ...string) string {
	t.Helper()
	args := append([]string{"-x", "-LLL", "-o", "ldif-wrap=no", "-H", s.URL, "-b", base, filter}, attrs...)
	out, err := exec.Command(findTool("ldapsearch"), args...).CombinedOutput()
	if err != nil && !bytes.Contains(out, []byte("No such object")) {
		t.Fatalf("ldapsearch %s %s: %v\n%s", base, filter, err, out)
	}
	return string(out)
}

func (s *slapd) addUser(t *testing.T, uid, pw string, uidNumber int) {
	s.add(t, fmt.Sprintf(`dn: uid=%[1]s,ou=people,%[2]s
objectClass: inetOrgPerson
objectClass: posixAccount
uid: %[1]s
cn: %[1]s
sn: %[1]s
uidNumber: %[3]d
gidNumber: %[3]d
homeDirectory: /home/%[1]s
userPassword: %[4]s
`, uid, s.Base, uidNumber, pw))
}

func (s *slapd) stop() { stopProc(s.cmd, s.done) }

// named is a running BIND server with a forward and a reverse zone that
// take TSIG-signed updates.
type named struct {
	Addr, KeyName, Secret, Zone, RevZone string
}

func startNamed(t *testing.T) *named {
	t.Helper()
	requireSiteTools(t)
	dir := t.TempDir()
	key := make([]byte, 32)
	rand.Read(key)
	n := &named{KeyName: "usher-key.", Secret: base64.StdEncoding.EncodeToString(key), Zone: "usher.test", RevZone: "10.in-addr.arpa"}
	port := freePort(t)
	n.Addr = fmt.Sprintf("127.0.0.1:%d", port)
	soa := "$TTL 300\n@ IN SOA ns.usher.test. admin.usher.test. 1 3600 600 86400 300\n@ IN NS ns.usher.test.\n"
	os.WriteFile(filepath.Join(dir, "fwd.zone"), []byte(soa+"ns IN A 127.0.0.1\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "rev.zone"), []byte(soa), 0o644)
	conf := fmt.Sprintf(`options {
	directory "%[1]s";
	pid-file "%[1]s/named.pid";
	session-keyfile "%[1]s/session.key";
	listen-on port %[2]d { 127.0.0.1; };
	listen-on-v6 { none; };
	recursion no;
	dnssec-validation no;
	notify no;
};
controls { };
key "%[3]s" { algorithm hmac-sha256; secret "%[4]s"; };
zone "%[5]s" { type primary; file "%[1]s/fwd.zone"; allow-update { key "%[3]s"; }; };
zone "%[6]s" { type primary; file "%[1]s/rev.zone"; allow-update { key "%[3]s"; }; };
`, dir, port, n.KeyName, n.Secret, n.Zone, n.RevZone)
	cf := filepath.Join(dir, "named.conf")
	os.WriteFile(cf, []byte(conf), 0o644)
	logf := filepath.Join(dir, "named.log")
	startProc(t, "named", exec.Command(findTool("named"), "-g", "-4", "-c", cf), logf)
	waitPort(t, n.Addr, "named", logf)
	// wait until the zone answers
	err := waitfor.Poll(t.Context(), 10*time.Second, func() error {
		if got := n.dig(t, "ns."+n.Zone, "A"); !strings.Contains(got, "127.0.0.1") {
			return fmt.Errorf("dig ns.%s A: %q", n.Zone, got)
		}
		return nil
	})
	if err != nil {
		b, _ := os.ReadFile(logf)
		t.Fatalf("named does not serve %s: %v\n%s", n.Zone, err, b)
	}
	return n
}

// dig asks named with BIND's own client; +short answers.
func (n *named) dig(t *testing.T, name, typ string) string {
	t.Helper()
	host, port, _ := net.SplitHostPort(n.Addr)
	out, err := exec.Command(findTool("dig"), "@"+host, "-p", port, "+short", "+tcp", "+time=2", "+tries=1", name, typ).CombinedOutput()
	if err != nil {
		t.Logf("dig %s %s: %v\n%s", name, typ, err, out)
	}
	return strings.TrimSpace(string(out))
}
