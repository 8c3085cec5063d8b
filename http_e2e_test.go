package usher

// The HTTP API over real HTTPS against a running site: authentication,
// resources, sets, errors, per-user isolation, parity with the native
// client, and the event stream resuming after a dropped connection.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/usher-vm/usher/api"
	"github.com/usher-vm/usher/core"
	"github.com/usher-vm/usher/core/coretest"
	"github.com/usher-vm/usher/internal/waitfor"
	"github.com/usher-vm/usher/site"
)

type httpSite struct {
	*site.Site
	base string
	hc   *http.Client
}

// startHTTPSite starts a site with the HTTP API on; sets are extra
// parameters, key and value in turn.
func startHTTPSite(t *testing.T, sets ...string) *httpSite {
	t.Helper()
	h := coretest.New(map[string]string{"alice": "alice-pw", "bob": "bob-pw", "root": "root-pw"}, "root")
	cfg := site.Params()
	sets = append([]string{"controller.http_listen", "127.0.0.1:0"}, sets...)
	for i := 0; i+1 < len(sets); i += 2 {
		if err := cfg.Set(sets[i], sets[i+1], "test"); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := site.Start(ctx, site.Options{Dir: t.TempDir(), LNMs: 2, Hooks: h, Config: cfg,
		Bind:           func(c *core.Controller) { h.View = c.State() },
		ReportInterval: 100 * time.Millisecond, ScanInterval: 200 * time.Millisecond, KeepAlive: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	pem, err := os.ReadFile(s.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "localhost"}}}
	t.Cleanup(hc.CloseIdleConnections)
	return &httpSite{Site: s, base: "https://" + s.Ctl.HTTPAddr(), hc: hc}
}

// do makes one call as user (password user-pw; "" = no credentials) and
// decodes the JSON answer into out (if not nil); it returns the status.
func (hs *httpSite) do(t *testing.T, user, method, path string, body any, out any) int {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, hs.base+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if user != "" {
		req.SetBasicAuth(user, user+"-pw")
	}
	resp, err := hs.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %d %s: %v", method, path, resp.StatusCode, b, err)
		}
	}
	return resp.StatusCode
}

type apiErr struct {
	Error api.Error `json:"error"`
}

func TestHTTPAPI(t *testing.T) {
	hs := startHTTPSite(t)

	// Authentication: none, wrong, right.
	var e apiErr
	if st := hs.do(t, "", "GET", "/api/v1/whoami", nil, &e); st != 401 || e.Error.Code != api.CodeUnauthorized {
		t.Fatalf("no credentials: %d %+v", st, e)
	}
	req, _ := http.NewRequest("GET", hs.base+"/api/v1/whoami", nil)
	req.SetBasicAuth("alice", "wrong")
	resp, err := hs.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Basic") {
		t.Fatalf("wrong password: %d %v", resp.StatusCode, resp.Header)
	}
	var who api.AuthReply
	if st := hs.do(t, "alice", "GET", "/api/v1/whoami", nil, &who); st != 200 || who.Identity.User != "alice" || who.Identity.Admin {
		t.Fatalf("whoami: %d %+v", st, who)
	}

	// Start, list, an operation on a set.
	var res api.Result
	if st := hs.do(t, "alice", "POST", "/api/v1/vms", api.StartArgs{Cluster: "web", Count: 3, ID: "h1"}, &res); st != 200 || res.OK() != 3 {
		t.Fatalf("start: %d %+v", st, res)
	}
	var lr api.ListReply
	if st := hs.do(t, "alice", "GET", "/api/v1/vms", nil, &lr); st != 200 || len(lr.VMs) != 3 {
		t.Fatalf("list: %d %d VMs", st, len(lr.VMs))
	}
	res = api.Result{}
	if st := hs.do(t, "alice", "POST", "/api/v1/vms/"+url.PathEscape("web[1-2]")+"/pause", map[string]any{}, &res); st != 200 || res.OK() != 2 {
		t.Fatalf("pause web[1-2]: %d %+v", st, res)
	}
	var vm api.VM
	if st := hs.do(t, "alice", "GET", "/api/v1/vms/web1", nil, &vm); st != 200 || vm.State != api.StatePaused {
		t.Fatalf("GET web1: %d %+v", st, vm)
	}
	lr = api.ListReply{}
	if st := hs.do(t, "alice", "GET", "/api/v1/vms?vms="+url.QueryEscape("/web[23]/"), nil, &lr); st != 200 || len(lr.VMs) != 2 {
		t.Fatalf("list /web[23]/: %d %d", st, len(lr.VMs))
	}

	// The native client sees what HTTP did; the same plan both ways is the
	// same result.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	alice, err := hs.Client(ctx, "alice", "alice-pw")
	if err != nil {
		t.Fatal(err)
	}
	defer alice.Close()
	waitfor.Error(t, 20*time.Second, "the native cache to see web1 paused", func() error {
		if v, ok := alice.VM(vm.Name); !ok || v.State != api.StatePaused {
			return fmt.Errorf("%+v", v)
		}
		return nil
	})
	plan := api.PlanArgs{Op: &api.OpArgs{Op: api.OpResume, VMs: []string{vm.Name}}}
	native, err := alice.Plan(ctx, plan)
	if err != nil {
		t.Fatal(err)
	}
	var viaHTTP api.Result
	if st := hs.do(t, "alice", "POST", "/api/v1/plan", plan, &viaHTTP); st != 200 {
		t.Fatalf("plan: %d", st)
	}
	nb, _ := json.Marshal(native)
	hb, _ := json.Marshal(viaHTTP)
	if !bytes.Equal(nb, hb) {
		t.Errorf("plan differs:\nnative %s\nhttp   %s", nb, hb)
	}

	// Isolation: bob sees and touches none of alice's VMs.
	lr = api.ListReply{}
	if st := hs.do(t, "bob", "GET", "/api/v1/vms", nil, &lr); st != 200 || len(lr.VMs) != 0 {
		t.Fatalf("bob's list: %d %+v", st, lr.VMs)
	}
	e = apiErr{}
	if st := hs.do(t, "bob", "POST", "/api/v1/vms/"+vm.Name+"/destroy", map[string]any{}, &e); st != 404 || e.Error.Code != api.CodeNotFound {
		t.Fatalf("bob destroys alice's VM: %d %+v", st, e)
	}
	e = apiErr{}
	if st := hs.do(t, "bob", "GET", "/api/v1/vms?all=1", nil, &e); st != 403 {
		t.Fatalf("bob lists everyone's: %d %+v", st, e)
	}
	lr = api.ListReply{}
	if st := hs.do(t, "root", "GET", "/api/v1/vms?all=1", nil, &lr); st != 200 || len(lr.VMs) != 3 {
		t.Fatalf("admin's list: %d %d", st, len(lr.VMs))
	}

	// Bad input: clear errors, nothing changed.
	for _, c := range []struct {
		method, path string
		body         any
		status       int
		code         string
	}{
		{"POST", "/api/v1/vms", map[string]any{"cluster": "x", "count": -1}, 400, api.CodeBadRequest},
		{"POST", "/api/v1/vms", map[string]any{"cluster": "x", "colour": "red"}, 400, api.CodeBadRequest},
		{"POST", "/api/v1/vms/web1/explode", map[string]any{}, 404, api.CodeNotFound},
		{"POST", "/api/v1/vms/nosuch/pause", map[string]any{}, 404, api.CodeNotFound},
		{"GET", "/api/v1/nothing", nil, 404, api.CodeNotFound},
		{"GET", "/api/v1/policy", nil, 403, api.CodeForbidden},
		{"GET", "/api/v1/events?all=1", nil, 403, api.CodeForbidden},
	} {
		e = apiErr{}
		if st := hs.do(t, "alice", c.method, c.path, c.body, &e); st != c.status || e.Error.Code != c.code || e.Error.Msg == "" {
			t.Errorf("%s %s: %d %+v, want %d %s", c.method, c.path, st, e, c.status, c.code)
		}
	}
	var rawReq = func(body string) int {
		req, _ := http.NewRequest("POST", hs.base+"/api/v1/vms", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.SetBasicAuth("alice", "alice-pw")
		resp, err := hs.hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if st := rawReq(`{"cluster":`); st != 400 {
		t.Errorf("truncated JSON: %d", st)
	}
	// What a form on another site could make a browser send: refused.
	form, _ := http.NewRequest("POST", hs.base+"/api/v1/vms/web3/destroy", strings.NewReader("x=1"))
	form.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	form.SetBasicAuth("alice", "alice-pw")
	if resp, err := hs.hc.Do(form); err != nil || resp.StatusCode != 400 {
		t.Errorf("a form POST: %v %v", resp.StatusCode, err)
	} else {
		resp.Body.Close()
	}

	// The OpenAPI document, served as checked in.
	req, _ = http.NewRequest("GET", hs.base+"/api/v1/openapi.json", nil)
	if resp, err := hs.hc.Do(req); err != nil {
		t.Fatal(err)
	} else {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		want, _ := os.ReadFile("docs/openapi.json")
		if resp.StatusCode != 200 || !bytes.Equal(b, want) {
			t.Errorf("openapi.json: %d, %d bytes, docs/openapi.json %d", resp.StatusCode, len(b), len(want))
		}
	}

	// Resources: nodes, clusters, images, keys.
	var nodes api.ListLNMsReply
	if st := hs.do(t, "alice", "GET", "/api/v1/nodes", nil, &nodes); st != 200 || len(nodes.LNMs) != 2 {
		t.Errorf("nodes: %d %+v", st, nodes)
	}
	// Node modes: admins only; the mode and reason come back.
	node := nodes.LNMs[0].Info.Name
	if st := hs.do(t, "alice", "POST", "/api/v1/nodes/"+node+"/isolate", map[string]string{"reason": "x"}, &e); st != 403 {
		t.Errorf("a user isolated a node: %d %+v", st, e)
	}
	var l api.LNM
	if st := hs.do(t, "root", "POST", "/api/v1/nodes/"+node+"/isolate", map[string]string{"reason": "fan noise"}, &l); st != 200 || l.Mode != api.ModeIsolated || l.ModeReason != "fan noise" {
		t.Errorf("isolate: %d %+v", st, l)
	}
	if st := hs.do(t, "root", "POST", "/api/v1/nodes/"+node+"/explode", map[string]string{}, &e); st != 404 {
		t.Errorf("unknown node action: %d %+v", st, e)
	}
	if st := hs.do(t, "root", "POST", "/api/v1/nodes/nosuch/drain", map[string]string{}, &e); st != 404 {
		t.Errorf("unknown node: %d %+v", st, e)
	}
	if st := hs.do(t, "root", "POST", "/api/v1/nodes/"+node+"/restore", map[string]string{}, &l); st != 200 || l.Mode != api.ModeActive {
		t.Errorf("restore: %d %+v", st, l)
	}
	var cls api.ClustersReply
	if st := hs.do(t, "alice", "GET", "/api/v1/clusters", nil, &cls); st != 200 || len(cls.Clusters) != 1 || len(cls.Clusters[0].VMs) != 3 {
		t.Errorf("clusters: %d %+v", st, cls)
	}
	var ims api.ImagesReply
	if st := hs.do(t, "alice", "GET", "/api/v1/images", nil, &ims); st != 200 || ims.Images == nil {
		t.Errorf("images: %d %+v", st, ims)
	}
	const key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHvVr1Xn2zS1p3Zc0Pq3A1C7dUIxFt8e0XyE0m2cQ0tA alice@laptop"
	var kr api.KeysReply
	if st := hs.do(t, "alice", "POST", "/api/v1/keys", map[string]string{"key": key}, &kr); st != 200 || len(kr.Keys) != 1 {
		t.Fatalf("keys add: %d %+v", st, kr)
	}
	if st := hs.do(t, "alice", "DELETE", "/api/v1/keys/"+url.PathEscape(kr.Keys[0].Fingerprint), nil, &kr); st != 200 || len(kr.Keys) != 0 {
		t.Errorf("keys remove: %d %+v", st, kr)
	}
}

// sseEvent is one event of a stream.
type sseEvent struct {
	id, typ string
	ev      api.Event
}

// openEvents opens an event stream as user; events arrive on the channel
// until the stream ends (then it is closed).
func (hs *httpSite) openEvents(t *testing.T, ctx context.Context, user, lastID string) <-chan sseEvent {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, "GET", hs.base+"/api/v1/events", nil)
	req.SetBasicAuth(user, user+"-pw")
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := hs.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("events: %d %v", resp.StatusCode, resp.Header)
	}
	out := make(chan sseEvent, 256)
	ready := make(chan struct{})
	go func() {
		defer close(out)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		var cur sseEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == ": ready":
				close(ready)
			case strings.HasPrefix(line, "id: "):
				cur.id = line[4:]
			case strings.HasPrefix(line, "event: "):
				cur.typ = line[7:]
			case strings.HasPrefix(line, "data: "):
				json.Unmarshal([]byte(line[6:]), &cur.ev)
			case line == "" && cur.typ != "":
				out <- cur
				cur = sseEvent{}
			}
		}
	}()
	select {
	case <-ready:
	case <-time.After(20 * time.Second):
		t.Fatal("the event stream never said ready")
	}
	return out
}

// next waits for an event matching ok.
func next(t *testing.T, evs <-chan sseEvent, what string, ok func(sseEvent) bool) sseEvent {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case e, open := <-evs:
			if !open {
				t.Fatalf("the stream ended before %s", what)
			}
			if ok(e) {
				return e
			}
		case <-deadline:
			t.Fatalf("no event: %s", what)
		}
	}
}

func TestHTTPEventStreamResumes(t *testing.T) {
	hs := startHTTPSite(t)
	var res api.Result
	if st := hs.do(t, "alice", "POST", "/api/v1/vms", api.StartArgs{Cluster: "ev", Count: 2}, &res); st != 200 || res.OK() != 2 {
		t.Fatalf("start: %d %+v", st, res)
	}
	bctx, bcancel := context.WithCancel(context.Background())
	defer bcancel()
	bob := hs.openEvents(t, bctx, "bob", "")
	ctx, cancel := context.WithCancel(context.Background())
	evs := hs.openEvents(t, ctx, "alice", "")
	hs.do(t, "alice", "POST", "/api/v1/vms/ev1/pause", map[string]any{}, nil)
	got := next(t, evs, "ev1 paused", func(e sseEvent) bool {
		return e.typ == api.EvStateChanged && e.ev.VM != nil && e.ev.VM.Short == "ev1" && e.ev.VM.State == api.StatePaused
	})
	cancel() // the connection drops
	for range evs {
	}
	// While alice is away, ev2 is paused and ev1 resumed.
	hs.do(t, "alice", "POST", "/api/v1/vms/ev2/pause", map[string]any{}, nil)
	hs.do(t, "alice", "POST", "/api/v1/vms/ev1/resume", map[string]any{}, nil)
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	evs = hs.openEvents(t, ctx2, "alice", got.id)
	next(t, evs, "the missed ev2 pause", func(e sseEvent) bool {
		return e.typ == api.EvStateChanged && e.ev.VM != nil && e.ev.VM.Short == "ev2" && e.ev.VM.State == api.StatePaused
	})
	next(t, evs, "the missed ev1 resume", func(e sseEvent) bool {
		return e.typ == api.EvStateChanged && e.ev.VM != nil && e.ev.VM.Short == "ev1" && e.ev.VM.State == api.StateRunning
	})
	// Bob's stream never carried alice's events.
	bcancel()
	for e := range bob {
		if e.ev.User == "alice" || (e.ev.VM != nil && e.ev.VM.Owner == "alice") {
			t.Fatalf("bob saw alice's event %+v", e)
		}
	}
	// A resume from an event never kept: resync.
	ctx3, cancel3 := context.WithCancel(context.Background())
	defer cancel3()
	evs = hs.openEvents(t, ctx3, "alice", "999999999")
	next(t, evs, "resync", func(e sseEvent) bool { return e.typ == "resync" })
}

func TestHTTPTokens(t *testing.T) {
	hs := startHTTPSite(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	alice, err := hs.Client(ctx, "alice", "alice-pw")
	if err != nil {
		t.Fatal(err)
	}
	defer alice.Close()
	rep, err := alice.Tokens(ctx, api.TokensArgs{Action: api.TokensCreate, Name: "ci"})
	if err != nil || rep.Secret == "" {
		t.Fatalf("create: %v %+v", err, rep)
	}
	bearer := func(method, path, tok string, body any) (int, []byte) {
		var rd io.Reader
		if body != nil {
			b, _ := json.Marshal(body)
			rd = bytes.NewReader(b)
		}
		req, _ := http.NewRequest(method, hs.base+path, rd)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := hs.hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	if st, b := bearer("GET", "/api/v1/whoami", rep.Secret, nil); st != 200 || !strings.Contains(string(b), `"user":"alice"`) {
		t.Fatalf("whoami with a token: %d %s", st, b)
	}
	if st, b := bearer("POST", "/api/v1/vms", rep.Secret, api.StartArgs{Cluster: "tok", Count: 1}); st != 200 || !strings.Contains(string(b), `"ok":true`) {
		t.Fatalf("start with a token: %d %s", st, b)
	}
	if st, _ := bearer("POST", "/api/v1/tokens", rep.Secret, map[string]string{"name": "more"}); st != 403 {
		t.Errorf("a token made a token: %d", st)
	}
	if st, _ := bearer("GET", "/api/v1/whoami", rep.Secret+"x", nil); st != 401 {
		t.Errorf("a wrong token: %d", st)
	}
	// Bob cannot revoke alice's token; alice can, over HTTP with her password.
	var e apiErr
	if st := hs.do(t, "bob", "DELETE", "/api/v1/tokens/"+rep.Tokens[0].ID+"?user=alice", nil, &e); st != 403 {
		t.Errorf("bob revoked alice's token: %d %+v", st, e)
	}
	var tr api.TokensReply
	if st := hs.do(t, "alice", "DELETE", "/api/v1/tokens/"+rep.Tokens[0].ID, nil, &tr); st != 200 || len(tr.Tokens) != 0 {
		t.Fatalf("revoke: %d %+v", st, tr)
	}
	if st, _ := bearer("GET", "/api/v1/whoami", rep.Secret, nil); st != 401 {
		t.Errorf("a revoked token still works: %d", st)
	}
}

func TestHTTPMetrics(t *testing.T) {
	hs := startHTTPSite(t)
	var res api.Result
	if st := hs.do(t, "alice", "POST", "/api/v1/vms", api.StartArgs{Cluster: "m", Count: 2}, &res); st != 200 || res.OK() != 2 {
		t.Fatalf("start: %d %+v", st, res)
	}
	hs.do(t, "alice", "POST", "/api/v1/vms/m1/pause", map[string]any{}, nil)
	hs.do(t, "alice", "POST", "/api/v1/vms/nosuch/pause", map[string]any{}, nil)
	var e apiErr
	if st := hs.do(t, "alice", "GET", "/metrics", nil, &e); st != 403 {
		t.Errorf("metrics for a user: %d %+v", st, e)
	}
	req, _ := http.NewRequest("GET", hs.base+"/metrics", nil)
	req.SetBasicAuth("root", "root-pw")
	resp, err := hs.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	text := string(b)
	for _, want := range []string{
		`usher_vms{state="running"} 1`, `usher_vms{state="paused"} 1`, `usher_nodes{state="connected"} 2`,
		`usher_requests_total{method="start",outcome="ok"} 1`, `usher_requests_total{method="op_on",outcome="ok"} 1`,
		`usher_request_duration_seconds_count{method="start"} 1`, `usher_logins_total{outcome="ok"}`,
		`usher_vm_list_entries{list="lost"} 0`, "usher_event_feed_cuts_total 0", "go_goroutines", "process_resident_memory_bytes",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		t.Errorf("metrics: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
}

func TestHTTPAsyncOperations(t *testing.T) {
	hs := startHTTPSite(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	evs := hs.openEvents(t, ctx, "alice", "")
	req, _ := http.NewRequest("POST", hs.base+"/api/v1/vms?async=1", strings.NewReader(`{"cluster":"as","count":2,"id":"async-1"}`))
	req.Header.Set("Content-Type", "application/json")
	req.SetBasicAuth("alice", "alice-pw")
	resp, err := hs.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var op api.Operation
	json.NewDecoder(resp.Body).Decode(&op)
	resp.Body.Close()
	if resp.StatusCode != 202 || op.ID == "" || resp.Header.Get("Location") != "/api/v1/operations/"+op.ID || op.Method != "start" {
		t.Fatalf("async start: %d %+v %v", resp.StatusCode, op, resp.Header)
	}
	var done api.Operation
	if st := hs.do(t, "alice", "GET", "/api/v1/operations/"+op.ID+"/wait?timeout=60s", nil, &done); st != 200 || done.Status != api.OpDone || done.Result == nil || done.Result.OK() != 2 {
		t.Fatalf("wait: %d %+v", st, done)
	}
	next(t, evs, "the operation's event", func(e sseEvent) bool {
		return e.typ == api.EvOperation && e.ev.Detail["id"] == op.ID && e.ev.Detail["status"] == api.OpDone
	})
	// The request id makes a retry idempotent, asynchronous or not.
	var again api.Result
	if st := hs.do(t, "alice", "POST", "/api/v1/vms", api.StartArgs{Cluster: "as", Count: 2, ID: "async-1"}, &again); st != 200 || again.OK() != 2 {
		t.Fatalf("retry: %d %+v", st, again)
	}
	var lr api.ListReply
	if hs.do(t, "alice", "GET", "/api/v1/vms?cluster=as", nil, &lr); len(lr.VMs) != 2 {
		t.Fatalf("a retry started more VMs: %d", len(lr.VMs))
	}
	// An asynchronous operation that fails says why; others' operations are not found.
	req, _ = http.NewRequest("POST", hs.base+"/api/v1/vms/as1/restore?async=1", strings.NewReader(`{}`))
	req.Header.Set("Content-Type", "application/json")
	req.SetBasicAuth("alice", "alice-pw")
	resp, err = hs.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	json.NewDecoder(resp.Body).Decode(&op)
	resp.Body.Close()
	if st := hs.do(t, "alice", "GET", "/api/v1/operations/"+op.ID+"/wait", nil, &done); st != 200 || done.Status != api.OpDone || done.Result.OK() != 0 {
		t.Fatalf("restore of a running VM: %d %+v", st, done)
	}
	var e apiErr
	if st := hs.do(t, "bob", "GET", "/api/v1/operations/"+op.ID, nil, &e); st != 404 {
		t.Errorf("bob reads alice's operation: %d", st)
	}
	var list struct {
		Operations []api.Operation `json:"operations"`
	}
	if hs.do(t, "alice", "GET", "/api/v1/operations", nil, &list); len(list.Operations) != 2 {
		t.Errorf("alice's operations: %+v", list)
	}
}

func TestLNMMetrics(t *testing.T) {
	h := coretest.New(map[string]string{"alice": "alice-pw"}, "")
	cfg := site.Params()
	cfg.Set("lnm.metrics_listen", "127.0.0.1:0", "test")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := site.Start(ctx, site.Options{Dir: t.TempDir(), LNMs: 1, Hooks: h, Config: cfg,
		Bind:           func(c *core.Controller) { h.View = c.State() },
		ReportInterval: 100 * time.Millisecond, ScanInterval: 200 * time.Millisecond, KeepAlive: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	alice, err := s.Client(ctx, "alice", "alice-pw")
	if err != nil {
		t.Fatal(err)
	}
	defer alice.Close()
	if r, err := alice.Start(ctx, api.StartArgs{Cluster: "m", Count: 1}); err != nil || r.OK() != 1 {
		t.Fatalf("start: %v %+v", err, r)
	}
	pem, _ := os.ReadFile(s.CAFile)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "node1"}}}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get("https://" + s.MetricsAddr("node1") + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`usher_lnm_driver_call_duration_seconds_count{call="start",outcome="ok"} 1`,
		`usher_lnm_connected 1`, `usher_lnm_guests 1`, `usher_lnm_node_cpu_cores{window="1m"}`, `usher_lnm_driver_call_duration_seconds_count{call="list",outcome="ok"}`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("LNM metrics lack %s", want)
		}
	}
}
