package controller_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/usher-vm/usher/api"
	"github.com/usher-vm/usher/api/apitest"
	"github.com/usher-vm/usher/controller"
	"github.com/usher-vm/usher/core"
	"github.com/usher-vm/usher/core/coretest"
	"github.com/usher-vm/usher/transport"
)

// live is one controller, in process, with two fake nodes, served over
// loopback TLS, and a logged-in user and admin: the fuzz target calls it
// again and again.
type live struct {
	c           *core.Controller
	user, admin *transport.Session
	stop        func()
}

func startLive(dir string) (*live, error) {
	ca, err := transport.CreateCA(dir, "fuzz CA")
	if err != nil {
		return nil, err
	}
	cert, key, err := ca.Issue(transport.RoleController, "controller", []string{"localhost", "127.0.0.1"}, dir)
	if err != nil {
		return nil, err
	}
	caFile := filepath.Join(dir, transport.CACertFile)
	tlsCfg, err := transport.ServerTLS(cert, key, caFile)
	if err != nil {
		return nil, err
	}
	h := coretest.New(map[string]string{"alice": "pw", "root": "pw"}, "root")
	h.MaxVMs = 200
	c := core.New(core.Config{Domain: "usher.test", MaxRequestVMs: 50, OwnerOnly: true, OpTimeout: 5 * time.Second, StartTimeout: 5 * time.Second}, h)
	h.View = c.State()
	n1, n2 := apitest.NewNode("n1"), apitest.NewNode("n2")
	n1.Peers["n2"], n2.Peers["n1"] = n2, n1
	for _, n := range []*apitest.Node{n1, n2} {
		if _, err := c.AttachLNM(context.Background(), api.Hello{Node: api.NodeInfo{Name: n.Name, CPUs: 1 << 12, MemMB: 1 << 24}}, n, nil); err != nil {
			return nil, err
		}
	}
	keys, err := controller.LoadKeyStore(filepath.Join(dir, "keys.json"), slog.New(slog.DiscardHandler))
	if err != nil {
		return nil, err
	}
	tokens, err := controller.LoadTokenStore(filepath.Join(dir, "tokens.json"), slog.New(slog.DiscardHandler))
	if err != nil {
		return nil, err
	}
	srv := controller.New(c, tlsCfg, controller.Options{Logins: controller.LoginLimits{Free: 1 << 30}, Keys: keys, Tokens: tokens, ImageDir: dir})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Serve(ctx, ln); close(done) }()
	cfg, err := transport.ClientTLS(caFile, "", "", "localhost")
	if err != nil {
		cancel()
		return nil, err
	}
	login := func(user string) (*transport.Session, error) {
		s, err := transport.Dial(ctx, ln.Addr().String(), cfg, transport.DefaultLimits(), nil)
		if err != nil {
			return nil, err
		}
		s.SetMux(transport.NewMux(nil))
		go s.Serve(ctx)
		_, err = transport.Call(ctx, s, api.MAuth, api.AuthArgs{User: user, Password: "pw"})
		return s, err
	}
	l := &live{c: c}
	if l.user, err = login("alice"); err != nil {
		cancel()
		return nil, err
	}
	if l.admin, err = login("root"); err != nil {
		cancel()
		return nil, err
	}
	l.stop = func() {
		l.user.Close()
		l.admin.Close()
		cancel()
		<-done
		c.Close()
	}
	return l, nil
}

// clientMethods are the calls of the client link a fuzzed request may name.
var clientMethods = []api.Method[json.RawMessage, json.RawMessage]{
	{Name: api.MWhoami.Name}, {Name: api.MList.Name}, {Name: api.MListLNMs.Name}, {Name: api.MClusters.Name},
	{Name: api.MStart.Name}, {Name: api.MOpOn.Name}, {Name: api.MMigrate.Name}, {Name: api.MForget.Name},
	{Name: api.MPlan.Name}, {Name: api.MPolicy.Name}, {Name: api.MStatus.Name}, {Name: api.MAuth.Name},
	{Name: api.MImages.Name}, {Name: api.MKeys.Name}, {Name: api.MTokens.Name}, {Name: api.MSetLNMMode.Name},
	{Name: api.MReservations.Name},
}

// FuzzClientMethods calls every method of the client link with arbitrary
// JSON arguments, as a user and as an admin, against a live controller:
// nothing may panic out of a handler (the call fails alone), the next call
// must succeed, and the state's invariants (indices, lists, capacity) must
// hold after every call.
func FuzzClientMethods(f *testing.F) {
	seeds := map[string]any{
		"start":        api.StartArgs{Cluster: "web", Count: 3, MemMB: 256},
		"op_on":        api.OpArgs{Op: api.OpPause, VMs: []string{"web1.alice.usher.test"}},
		"migrate":      api.MigrateArgs{VMs: []string{"web2.alice.usher.test"}, LNMs: []string{"n2"}},
		"forget":       api.ForgetArgs{VMs: []string{"web3.alice.usher.test"}},
		"plan":         api.PlanArgs{Start: &api.StartArgs{Cluster: "db", Count: 2}},
		"list":         api.ListArgs{All: true, Lists: true, Limit: 2, After: "a"},
		"clusters":     api.ClustersArgs{All: true},
		"status":       api.StatusArgs{Check: true},
		"policy":       api.PolicyArgs{Action: "status"},
		"tokens":       api.TokensArgs{Action: api.TokensCreate, Name: "ci", Expires: "1h"},
		"set_lnm_mode": api.SetLNMModeArgs{LNM: "n1", Mode: api.ModeDraining, Reason: "fuzz"},
		"reservations": api.ReservationsArgs{Action: api.ResCreate, User: "alice", MemMB: 512, VCPUs: 1, LNMs: []string{"n1"}, For: "1h"},
		"keys":         api.KeysArgs{Action: api.KeysAdd, Key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHvVr1Xn2zS1p3Zc0Pq3A1C7dUIxFt8e0XyE0m2cQ0tA a@b"},
	}
	for i, m := range clientMethods {
		b, _ := json.Marshal(seeds[m.Name])
		f.Add(uint8(i), false, b)
		f.Add(uint8(i), true, b)
	}
	f.Add(uint8(4), false, []byte(`{"cluster":"x","count":-1}`))
	f.Add(uint8(4), false, []byte(`{"cluster":"x","count":9223372036854775807}`))
	f.Add(uint8(4), false, []byte(`{"cluster":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","count":1}`))
	f.Add(uint8(5), false, []byte(`{"op":"destroy","vms":["web1.alice.usher.test","web1.alice.usher.test"],"args":{"abort":"1"}}`))
	f.Add(uint8(8), false, []byte(`{"start":{"cluster":"x","count":-5}}`))
	liveSite, err := startLive(f.TempDir())
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(liveSite.stop)
	f.Fuzz(func(t *testing.T, which uint8, asAdmin bool, args []byte) {
		if !json.Valid(args) {
			return
		}
		s := liveSite.user
		if asAdmin {
			s = liveSite.admin
		}
		m := clientMethods[int(which)%len(clientMethods)]
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_, err := transport.Call(ctx, s, m, json.RawMessage(args))
		if err != nil && errorsIsInternal(err) {
			t.Fatalf("%s(%s): internal error: %v", m.Name, args, err)
		}
		if _, err := transport.Call(ctx, s, api.MWhoami, api.Empty{}); err != nil {
			t.Fatalf("after %s(%s) the next call fails: %v", m.Name, args, err)
		}
		if err := liveSite.c.State().Check(); err != nil {
			t.Fatalf("after %s(%s): %v", m.Name, args, err)
		}
	})
}

func errorsIsInternal(err error) bool {
	var e *api.Error
	return errors.As(err, &e) && e.Code == api.CodeInternal
}

// httpRoutes are the HTTP API's routes a fuzzed request may take ({} is
// filled with fuzzed text).
var httpRoutes = []struct{ method, path string }{
	{"GET", "/api/v1/whoami"}, {"GET", "/api/v1/vms?{}"}, {"GET", "/api/v1/vms/{}"}, {"POST", "/api/v1/vms"},
	{"POST", "/api/v1/vms/{}/pause"}, {"POST", "/api/v1/vms/{}/destroy"}, {"POST", "/api/v1/vms/{}/migrate"},
	{"POST", "/api/v1/vms/{}/forget"}, {"POST", "/api/v1/vms/{}/{}"}, {"POST", "/api/v1/plan"}, {"GET", "/api/v1/nodes?{}"},
	{"GET", "/api/v1/clusters?{}"}, {"GET", "/api/v1/images"}, {"POST", "/api/v1/keys"}, {"DELETE", "/api/v1/keys/{}"},
	{"POST", "/api/v1/tokens"}, {"DELETE", "/api/v1/tokens/{}"}, {"GET", "/api/v1/operations/{}"}, {"GET", "/api/v1/policy"},
	{"POST", "/api/v1/vms?async=1"}, {"GET", "/{}"},
}

// FuzzHTTPAPI sends arbitrary paths, queries and bodies to the HTTP API's
// routes, as a user and as an admin: never an internal error, and the
// state's invariants hold after every request.
func FuzzHTTPAPI(f *testing.F) {
	f.Add(uint8(3), false, "", []byte(`{"cluster":"web","count":3}`))
	f.Add(uint8(4), false, "web[1-2]", []byte(`{}`))
	f.Add(uint8(6), true, "web1.alice.usher.test", []byte(`{"lnms":["n2"]}`))
	f.Add(uint8(1), true, "all=1&lists=1&vms=/w.*/", []byte(nil))
	f.Add(uint8(9), false, "", []byte(`{"start":{"cluster":"x","count":-1}}`))
	f.Add(uint8(8), false, "web1/../../x", []byte(`{"args":{"a":"b"},"force":true}`))
	f.Add(uint8(15), false, "", []byte(`{"name":"ci","expires":"-1h"}`))
	dir := f.TempDir()
	liveSite, err := startLive(dir)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(liveSite.stop)
	keys, _ := controller.LoadKeyStore(filepath.Join(dir, "hkeys.json"), slog.New(slog.DiscardHandler))
	tokens, _ := controller.LoadTokenStore(filepath.Join(dir, "htokens.json"), slog.New(slog.DiscardHandler))
	srv := controller.New(liveSite.c, nil, controller.Options{Logins: controller.LoginLimits{Free: 1 << 30}, Keys: keys, Tokens: tokens})
	ctx, cancel := context.WithCancel(context.Background())
	f.Cleanup(cancel)
	h := srv.HTTPHandler(ctx, controller.HTTPOptions{})
	f.Fuzz(func(t *testing.T, which uint8, asAdmin bool, text string, body []byte) {
		r := httpRoutes[int(which)%len(httpRoutes)]
		path := strings.ReplaceAll(r.path, "{}", url.PathEscape(text))
		if strings.Contains(r.path, "?{}") {
			path = strings.ReplaceAll(r.path, "{}", text)
		}
		req, err := http.NewRequest(r.method, "https://usher"+path, bytes.NewReader(body))
		if err != nil {
			return // not a request a client could send
		}
		user := "alice"
		if asAdmin {
			user = "root"
		}
		req.SetBasicAuth(user, "pw")
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code >= 500 && rec.Code != http.StatusServiceUnavailable {
			t.Fatalf("%s %s %q: %d %s", r.method, path, body, rec.Code, rec.Body.String())
		}
		if err := liveSite.c.State().Check(); err != nil {
			t.Fatalf("after %s %s %q: %v", r.method, path, body, err)
		}
	})
}
