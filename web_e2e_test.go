//go:build web

package usher

// The web console in a real headless Chromium (chromedp): log in, plan
// and start three VMs, pause one from the page, and see another one's
// pause (made elsewhere) pushed by the event stream, without a reload.
// Run with `make test-web` (part of `make test`); testdata/web/harness.sh
// installs Chromium (Debian package chromium) when missing.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"golang.org/x/crypto/bcrypt"

	"github.com/usher-vm/usher/internal/waitfor"
	"github.com/usher-vm/usher/site"
)

// chromium installs (when missing) and finds the browser.
func chromium(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("bash", "testdata/web/harness.sh", "install").Output()
	if err != nil {
		var ee *exec.ExitError
		msg := err.Error()
		if errors.As(err, &ee) {
			msg = string(ee.Stderr)
		}
		if os.Getenv("CI") != "true" && os.Getuid() != 0 {
			t.Skipf("no browser: %s", msg)
		}
		t.Fatalf("web harness: %s", msg)
	}
	p := strings.TrimPrefix(strings.TrimSpace(string(out)), "CHROMIUM=")
	if p == "" {
		t.Fatal("web harness printed no CHROMIUM=")
	}
	return p
}

func TestWebConsole(t *testing.T) {
	browser := chromium(t)
	dir := t.TempDir()
	var lines []string
	for _, u := range [][2]string{{"alice", "alice-pw"}, {"root", "root-pw"}} {
		b, err := bcrypt.GenerateFromPassword([]byte(u[1]), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		lines = append(lines, u[0]+":"+string(b))
	}
	ht := filepath.Join(dir, "users.htpasswd")
	os.WriteFile(ht, []byte(strings.Join(lines, "\n")+"\n"), 0o600)
	cfg := site.Params()
	for k, v := range map[string]string{
		"controller.http_listen": "127.0.0.1:0",
		"policy.enable":          "auth_htpasswd,authz_owner,quota,place_leastloaded",
		"policy.config":          fmt.Sprintf(`{auth_htpasswd = {file = %q, admins = ["root"]}}`, ht),
	} {
		if err := cfg.Set(k, v, "test"); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	s, err := site.Start(ctx, site.Options{Dir: dir, LNMs: 2, Config: cfg,
		ReportInterval: 200 * time.Millisecond, ScanInterval: 500 * time.Millisecond, KeepAlive: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	addr := s.Ctl.HTTPAddr()

	// Trust exactly the controller's certificate (its public key's hash).
	pem, _ := os.ReadFile(s.CAFile)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	spki := sha256.Sum256(conn.ConnectionState().PeerCertificates[0].RawSubjectPublicKeyInfo)
	conn.Close()

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(browser), chromedp.NoSandbox,
		chromedp.WindowSize(1280, 800), chromedp.Flag("ignore-certificate-errors-spki-list", base64.StdEncoding.EncodeToString(spki[:])))
	actx, acancel := chromedp.NewExecAllocator(ctx, opts...)
	defer acancel()
	bctx, bcancel := chromedp.NewContext(actx)
	defer bcancel()
	page := func(steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(bctx, steps...); err != nil {
			t.Fatal(err)
		}
	}
	eval := func(js string) string {
		t.Helper()
		v, err := chromedp.Run(bctx, chromedp.Evaluate[string](js))
		if err != nil {
			t.Fatalf("%s: %v", js, err)
		}
		return v
	}
	waitPage := func(what, js string) {
		t.Helper()
		waitfor.Error(t, time.Minute, what, func() error {
			if got := eval(js); got != "true" {
				return fmt.Errorf("not yet (%s); the page: %.300s", got, eval(`location.href + " " + document.querySelector("#error").outerHTML + " js:" + (typeof api) + " " + document.querySelector("#conn").textContent`))
			}
			return nil
		})
	}

	// Log in (a wrong password first: a clear message).
	page(chromedp.Navigate("https://localhost:"+portOf(addr)+"/"),
		chromedp.WaitVisible(chromedp.CSS("#login")),
		chromedp.SetValue(chromedp.CSS("#user"), "alice"),
		chromedp.SetValue(chromedp.CSS("#password"), "nope"),
		chromedp.Click(chromedp.CSS("#login-btn")))
	waitPage("a login error", `String(document.querySelector("#error").textContent.includes("Login failed"))`)
	page(chromedp.SetValue(chromedp.CSS("#password"), "alice-pw"),
		chromedp.Click(chromedp.CSS("#login-btn")),
		chromedp.WaitVisible(chromedp.CSS("#main")))
	waitPage("the event stream", `String(document.querySelector("#conn").textContent === "live")`)

	// Plan, read the plan, start.
	page(chromedp.SetValue(chromedp.CSS("#start-cluster"), "web"),
		chromedp.SetValue(chromedp.CSS("#start-count"), "3"),
		chromedp.Click(chromedp.CSS("#plan-btn")),
		chromedp.WaitVisible(chromedp.CSS("#plan")))
	plan := eval(`document.querySelector("#plan-body").textContent`)
	if !strings.Contains(plan, "web1.alice") || !strings.Contains(plan, "place_leastloaded") {
		t.Fatalf("the plan shows %q", plan)
	}
	page(chromedp.Click(chromedp.CSS("#confirm-btn")))
	waitPage("three VMs running in the table", `String([...document.querySelectorAll("#vms td.state")].filter(c => c.textContent === "running").length === 3)`)

	// Pause web1 from the page.
	page(chromedp.Click(chromedp.CSS(`tr[data-vm="web1.alice.usher.local"] input.sel`)),
		chromedp.Click(chromedp.CSS(`button[data-op="pause"]`)))
	waitPage("web1 paused", `String(document.querySelector('tr[data-vm="web1.alice.usher.local"] td.state').textContent === "paused")`)

	// Pause web2 elsewhere: the page learns it from the event stream.
	alice, err := s.Client(ctx, "alice", "alice-pw")
	if err != nil {
		t.Fatal(err)
	}
	defer alice.Close()
	if r, err := alice.Pause(ctx, "web2"); err != nil || r.OK() != 1 {
		t.Fatalf("pause web2: %v %+v", err, r)
	}
	waitPage("web2's pause pushed", `String(document.querySelector('tr[data-vm="web2.alice.usher.local"] td.state').textContent === "paused")`)
	if n := eval(`String(performance.getEntriesByType("navigation").length)`); n != "1" {
		t.Errorf("the page was reloaded (%s navigations)", n)
	}

	// Usage: the 1/5/15-minute averages and a small plot of the 1-minute one.
	waitPage("usage plotted", `String(document.querySelectorAll("#vms svg.spark").length === 3)`)

	shot, err := chromedp.Run(bctx, chromedp.CaptureScreenshot())
	if err != nil {
		t.Fatal(err)
	}
	if p := os.Getenv("USHER_SCREENSHOT"); p != "" {
		os.WriteFile(p, shot, 0o644)
	}
	if !bytes.HasPrefix(shot, []byte("\x89PNG")) {
		t.Errorf("the screenshot is not a PNG")
	}

	// An admin sees the nodes, with capacity.
	page(chromedp.Click(chromedp.CSS("#logout")),
		chromedp.WaitVisible(chromedp.CSS("#login")),
		chromedp.SetValue(chromedp.CSS("#user"), "root"),
		chromedp.SetValue(chromedp.CSS("#password"), "root-pw"),
		chromedp.Click(chromedp.CSS("#login-btn")),
		chromedp.WaitVisible(chromedp.CSS(`button[data-tab="nodes"]`)),
		chromedp.Click(chromedp.CSS(`button[data-tab="nodes"]`)))
	waitPage("two nodes listed", `String(document.querySelectorAll("#nodes tbody tr").length === 2)`)
	waitPage("their modes shown", `String(document.querySelector("#nodes tbody tr td:nth-child(3)").textContent.trim() === "active")`)
}

func portOf(addr string) string {
	_, p, _ := strings.Cut(addr, ":")
	return p
}
