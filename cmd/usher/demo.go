package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/usher-vm/usher/api"
	"github.com/usher-vm/usher/site"

	"golang.org/x/crypto/bcrypt"

	"github.com/usher-vm/usher/client"
	"github.com/usher-vm/usher/core/config"
	"github.com/usher-vm/usher/repl"
)

// clientParams are the keys of a client configuration file: ush's own.
func clientParams() *config.Set { return config.New(repl.Params()...) }

func policyStatusArgs() api.PolicyArgs { return api.PolicyArgs{Action: "status"} }

// dialFromConfig connects with the client configuration files.
func dialFromConfig(ctx context.Context) (*client.Client, error) {
	cfg := clientParams()
	if err := cfg.LoadFiles(config.DefaultPaths()...); err != nil {
		return nil, err
	}
	return client.Connect(ctx, client.Config{Addr: cfg.String("client.addr"), CAFile: cfg.String("client.ca_file"),
		ServerName: cfg.String("client.server_name"), User: cfg.String("client.user"), Password: cfg.String("client.password"),
		NoReconnect: true})
}

func randomPassword() string {
	b := make([]byte, 12)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func runDemo(ctx context.Context, args []string, out, errOut io.Writer) error {
	cfg := site.Params()
	fs := newFlags("demo", "[flags]", `Runs an embedded Usher site on loopback: a site CA and certificates, a
controller with the shipped Lua policies (htpasswd authentication, owner
authorization, quota, least-loaded placement), N simulated LNMs, a demo
user and an admin. It writes a client configuration file, prints
"client config: PATH", and opens the ush shell connected as the demo user.
Drop your own *.lua policies into STATE_DIR/policies/: they load at once.
The site is assembled exactly as 'usher controller' and 'usher lnm'
assemble theirs, from the same parameters: configuration files and
--log-* flags apply.

Example:
  usher demo --lnms 5
  usher demo --no-shell --state-dir /tmp/usher-demo &
  USHER_CONFIG=/tmp/usher-demo/client.toml ush -c 'start -n web -c 3'`, errOut)
	stateDir := fs.String("state-dir", "", "state directory (default: a new temporary directory)")
	lnms := fs.Int("lnms", 3, "simulated LNMs to start")
	noShell := fs.Bool("no-shell", false, "do not open the shell; run until interrupted")
	listen := fs.String("listen", "127.0.0.1:0", "controller address")
	httpListen := fs.String("http-listen", "127.0.0.1:0", "HTTP API address (\"\": off)")
	boot := fs.Duration("boot-delay", 300*time.Millisecond, "simulated boot time of a VM")
	cfg.BindFlags(fs, "log.")
	if err := cfg.LoadFiles(config.DefaultPaths()...); err != nil {
		return err
	}
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := cfg.ApplyFlags(fs); err != nil {
		return err
	}
	if *lnms < 1 || *lnms > 10000 {
		return fmt.Errorf("--lnms must be between 1 and 10000")
	}
	dir := *stateDir
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "usher-demo-"); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(filepath.Join(dir, "policies"), 0o755); err != nil {
		return err
	}
	logFile, err := os.OpenFile(filepath.Join(dir, "usher.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer logFile.Close()
	var logOut io.Writer = logFile
	if *noShell {
		logOut = io.MultiWriter(logFile, errOut)
	}
	log, err := logger(cfg.String("log.level"), cfg.String("log.format"), logOut)
	if err != nil {
		return err
	}
	// Users: the demo user and an admin, bcrypt-hashed in an htpasswd file.
	demoPW, adminPW := randomPassword(), randomPassword()
	var htpasswd []byte
	for _, u := range []struct{ name, pw string }{{"demo", demoPW}, {"admin", adminPW}} {
		h, err := bcrypt.GenerateFromPassword([]byte(u.pw), bcrypt.DefaultCost)
		if err != nil {
			return err
		}
		htpasswd = append(htpasswd, []byte(u.name+":"+string(h)+"\n")...)
	}
	htFile := filepath.Join(dir, "users.htpasswd")
	if err := os.WriteFile(htFile, htpasswd, 0o600); err != nil {
		return err
	}
	// The demo's policy configuration merges into what the files say.
	if err := cfg.Set("policy.config", fmt.Sprintf(`{auth_htpasswd = {file = %q, admins = ["admin"]}, quota = {max_vms = 50}}`, htFile), "demo"); err != nil {
		return err
	}
	if err := cfg.Set("controller.http_listen", *httpListen, "demo"); err != nil {
		return err
	}
	s, err := site.Start(ctx, site.Options{Dir: dir, Config: cfg, Listen: *listen, LNMs: *lnms, Logger: log,
		SimPersist: true, SimBootDelay: *boot, ExtraPolicyDirs: []string{filepath.Join(dir, "policies")}})
	if err != nil {
		return err
	}
	defer s.Close()
	_, port, _ := net.SplitHostPort(s.Addr)
	clientCfg := filepath.Join(dir, "client.toml")
	f, err := os.OpenFile(clientCfg, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	err = clientParams().WriteTOML(f, map[string]any{
		"client.addr": "127.0.0.1:" + port, "client.ca_file": s.CAFile, "client.server_name": "localhost",
		"client.user": "demo", "client.password": demoPW, "client.history_file": filepath.Join(dir, "ush_history"),
	})
	f.Close()
	if err != nil {
		return err
	}
	adminCfg := filepath.Join(dir, "admin.toml")
	if f, err = os.OpenFile(adminCfg, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600); err != nil {
		return err
	}
	clientParams().WriteTOML(f, map[string]any{
		"client.addr": "127.0.0.1:" + port, "client.ca_file": s.CAFile, "client.server_name": "localhost",
		"client.user": "admin", "client.password": adminPW,
	})
	f.Close()
	fmt.Fprintf(out, "Usher demo: controller on %s, %d simulated LNMs, state in %s\n", s.Addr, *lnms, dir)
	fmt.Fprintf(out, "users: demo (client.toml), admin (admin.toml); policies: drop *.lua into %s\n", filepath.Join(dir, "policies"))
	fmt.Fprintf(out, "client config: %s\n", clientCfg)
	if a := s.Ctl.HTTPAddr(); a != "" {
		fmt.Fprintf(out, "web console and HTTP API: https://localhost:%s/ (CA %s; user demo, the password in client.toml)\n", portOf(a), s.CAFile)
	}
	if *noShell {
		<-ctx.Done()
		return nil
	}
	c, err := s.Client(ctx, "demo", demoPW)
	if err != nil {
		return err
	}
	defer c.Close()
	return repl.Run(ctx, repl.Options{Client: c, In: os.Stdin, Out: out, HistoryFile: filepath.Join(dir, "ush_history")})
}

func portOf(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}
