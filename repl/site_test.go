package repl

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/usher-vm/usher/client"
	"github.com/usher-vm/usher/core"
	"github.com/usher-vm/usher/core/coretest"
	"github.com/usher-vm/usher/site"
	"go.uber.org/goleak"
)

// testSite starts a controller with simulated LNMs on loopback, with the
// coretest policy double (users alice, bob, root; root is admin).
func testSite(t *testing.T, lnms int, maxVMs int) *site.Site {
	t.Helper()
	h := coretest.New(map[string]string{"alice": "alice-pw", "bob": "bob-pw", "root": "root-pw"}, "root")
	h.MaxVMs = maxVMs
	o := site.Options{Dir: t.TempDir(), LNMs: lnms, Hooks: h, Bind: func(c *core.Controller) { h.View = c.State() },
		ReportInterval: 100 * time.Millisecond, ScanInterval: 200 * time.Millisecond, KeepAlive: time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := site.Start(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func connect(t *testing.T, s *site.Site, user string) *client.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := s.Client(ctx, user, user+"-pw")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// writeClientConfig writes the TOML client configuration `usher demo`
// writes, for user.
func writeClientConfig(t *testing.T, s *site.Site, user, password string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ush.toml")
	text := fmt.Sprintf("[client]\naddr = %q\nca_file = %q\nserver_name = \"localhost\"\nuser = %q\n", s.Addr, s.CAFile, user)
	if password != "" {
		text += fmt.Sprintf("password = %q\n", password)
	}
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
	buildDir  string
)

// ushBinary builds cmd/ush once per test run.
func ushBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "ush-test-")
		if buildErr != nil {
			return
		}
		binPath = filepath.Join(buildDir, "ush")
		cmd := exec.Command("go", "build", "-o", binPath, "./cmd/ush")
		cmd.Dir = ".."
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			buildErr = fmt.Errorf("go build ./cmd/ush: %v\n%s", err, out.String())
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	// Every site, client and session the tests started is stopped: no
	// goroutine of theirs is left.
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goroutines left after the tests: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// shellEnv is an environment that reads no configuration but cfg.
func shellEnv(t *testing.T, cfg string) []string {
	home := t.TempDir()
	env := []string{"HOME=" + home, "XDG_CONFIG_HOME=" + filepath.Join(home, "config"), "PATH=" + os.Getenv("PATH"), "TERM=xterm", "USER=nobody"}
	if cfg != "" {
		env = append(env, "USHER_CONFIG="+cfg)
	}
	return env
}

var ansi = regexp.MustCompile(`\x1b\[[0-9;?]*[A-Za-z]`)

// clean removes terminal escapes and carriage returns.
func clean(s string) string {
	return strings.ReplaceAll(ansi.ReplaceAllString(s, ""), "\r", "")
}
