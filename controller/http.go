package controller

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/usher-vm/usher/api"
	"github.com/usher-vm/usher/client"
	"github.com/usher-vm/usher/controller/webui"
	"github.com/usher-vm/usher/core"
)

// The HTTP API: the client link's calls as JSON resources over HTTPS,
// for tools that do not link the Go client. Same authentication chain
// (HTTP Basic over TLS), same login backoff, same per-user visibility, the
// same policy chain behind every call (API tokens, Bearer, stand for the
// identity they were made by), the same sets as the shell
// (web[1-4], /re/, @cluster) and the same error codes.
//
//	GET    /api/v1/whoami
//	GET    /api/v1/vms[?all=1&cluster=C&status=1&lists=1&vms=SET]
//	GET    /api/v1/vms/{vm}
//	POST   /api/v1/vms                  {"cluster","count","names","mem_mb","vcpus","lnms","args","id"}
//	POST   /api/v1/vms/{set}/{action}   action: an operation, migrate ({"lnms"}), forget; {"args","force","id"}
//	POST   /api/v1/plan                 api.PlanArgs
//	GET    /api/v1/nodes[?status=1]     GET /api/v1/clusters[?all=1]   GET /api/v1/images
//	POST   /api/v1/nodes/{node}/{action}   action: isolate, drain, restore; {"reason"} (admins)
//	GET    /api/v1/reservations[?all=1]   POST /api/v1/reservations   POST …/{id}/extend   DELETE …/{id}
//	GET    /api/v1/keys                 POST /api/v1/keys {"key"}      DELETE /api/v1/keys/{key}
//	GET    /api/v1/tokens               POST /api/v1/tokens {"name","expires"}   DELETE /api/v1/tokens/{id}
//	GET    /api/v1/operations[/{id}[/wait?timeout=30s]]   asynchronous requests (?async=1 on POSTs)
//	GET    /api/v1/policy               (admins)
//	GET    /api/v1/events[?cluster=C&all=1]   Server-Sent Events, resumable (Last-Event-ID)
//	GET    /metrics                     Prometheus metrics (admins)
//	GET    /ui/                         the web console (package webui)

// maxBody bounds a request body (the largest start or op request fits).
const maxBody = 8 << 20

// httpStatus maps error codes to HTTP statuses.
func httpStatus(code string) int {
	switch code {
	case api.CodeBadRequest:
		return http.StatusBadRequest
	case api.CodeUnauthorized:
		return http.StatusUnauthorized
	case api.CodeForbidden:
		return http.StatusForbidden
	case api.CodeNotFound:
		return http.StatusNotFound
	case api.CodeRejected: // a policy said no: the body's code says which
		return http.StatusForbidden
	case api.CodeTooMany:
		return http.StatusTooManyRequests
	case api.CodeUnavailable, api.CodeNotLeader:
		return http.StatusServiceUnavailable
	case api.CodeUnknown:
		return http.StatusNotFound
	}
	return http.StatusInternalServerError
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.Encode(v)
}

// writeError answers with {"error": {"code", "msg"}}. A 401 asks for
// Basic credentials, except from the web console (X-Usher-Client: web),
// where the browser would answer it with its own login dialog.
func writeError(w http.ResponseWriter, r *http.Request, err error) {
	e := api.AsError(err)
	if e.Code == api.CodeUnauthorized && r.Header.Get("X-Usher-Client") != "web" {
		w.Header().Set("WWW-Authenticate", `Basic realm="usher", charset="UTF-8"`)
	}
	if e.RetryMS > 0 {
		w.Header().Set("Retry-After", strconv.FormatInt((e.RetryMS+999)/1000, 10))
	}
	writeJSON(w, httpStatus(e.Code), map[string]*api.Error{"error": e})
}

// authCache remembers successful logins for a short while, so that a
// script making many calls does not run the authentication chain (and its
// bcrypt) for each one. Keyed by a hash of the credentials; a changed
// password stops working within TTL.
type authCache struct {
	ttl time.Duration
	max int
	mu  sync.Mutex
	m   map[[32]byte]authEntry
}

type authEntry struct {
	id  api.Identity
	exp time.Time
}

func (c *authCache) get(k [32]byte) (api.Identity, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[k]
	if !ok || time.Now().After(e.exp) {
		delete(c.m, k)
		return api.Identity{}, false
	}
	return e.id, true
}

func (c *authCache) put(k [32]byte, id api.Identity) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= c.max {
		now := time.Now()
		for k, e := range c.m {
			if now.After(e.exp) || len(c.m) >= c.max {
				delete(c.m, k)
			}
		}
	}
	c.m[k] = authEntry{id, time.Now().Add(c.ttl)}
}

// HTTPOptions configure the HTTP API.
type HTTPOptions struct {
	// AuthTTL is how long a successful login is remembered (default 30s).
	AuthTTL time.Duration
	// Replay is how many recent events are kept for event streams that
	// resume (Last-Event-ID) after a dropped connection (default 8192).
	Replay int
}

// httpAPI is the HTTP face of a Server.
type httpAPI struct {
	s      *Server
	o      HTTPOptions
	auth   *authCache
	replay *replay
	ops    *operations
	ctx    context.Context // the server's: asynchronous operations run under it
	docs   []docRoute      // the routes' documentation (OpenAPI)
}

// ServeHTTP serves the HTTP API over TLS on ln until ctx ends (then it
// shuts down, waiting up to 5 s for calls in progress). The native
// endpoint's certificate is used; clients need none.
func (s *Server) ServeHTTP(ctx context.Context, ln net.Listener, tlsCfg *tls.Config, o HTTPOptions) error {
	if o.AuthTTL <= 0 {
		o.AuthTTL = 30 * time.Second
	}
	if o.Replay <= 0 {
		o.Replay = 8192
	}
	h := s.newHTTP(ctx, o)
	cfg := tlsCfg.Clone()
	cfg.ClientAuth = tls.NoClientCert
	cfg.NextProtos = []string{"h2", "http/1.1"}
	srv := &http.Server{Handler: h.routes(), TLSConfig: cfg, ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 64 << 10,
		BaseContext: func(net.Listener) context.Context { return ctx }}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // the replay buffer's feed; ends with ctx
		defer wg.Done()
		h.replay.follow(ctx, s.c, s.log)
	}()
	err := serveUntil(ctx, srv, tls.NewListener(ln, cfg))
	wg.Wait()
	h.ops.wg.Wait()
	return err
}

func (s *Server) newHTTP(ctx context.Context, o HTTPOptions) *httpAPI {
	if o.AuthTTL <= 0 {
		o.AuthTTL = 30 * time.Second
	}
	if o.Replay <= 0 {
		o.Replay = 8192
	}
	return &httpAPI{s: s, o: o, auth: &authCache{ttl: o.AuthTTL, max: 10_000, m: map[[32]byte]authEntry{}},
		replay: newReplay(o.Replay), ops: newOperations(1000), ctx: ctx}
}

// HTTPHandler is the HTTP API's handler without a listener or the replay
// feed (tests and fuzzing; ServeHTTP serves the whole of it). Event
// streams see only operation events; asynchronous operations run under ctx.
func (s *Server) HTTPHandler(ctx context.Context, o HTTPOptions) http.Handler {
	return s.newHTTP(ctx, o).routes()
}

// identity authenticates a request: HTTP Basic through the
// authentication chain, after the same login backoff as the native link.
func (h *httpAPI) identity(r *http.Request) (api.Identity, error) {
	if tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		if h.s.opts.Tokens == nil {
			return api.Identity{}, api.Errorf(api.ErrUnauthorized, "this controller keeps no API tokens")
		}
		return h.s.opts.Tokens.Identity(strings.TrimSpace(tok))
	}
	user, pw, ok := r.BasicAuth()
	if !ok {
		return api.Identity{}, api.Errorf(api.ErrUnauthorized, "log in with HTTP Basic authentication (user and password) or an API token (Authorization: Bearer …)")
	}
	k := sha256.Sum256([]byte(user + "\x00" + pw))
	if id, ok := h.auth.get(k); ok {
		return id, nil
	}
	ip, _, _ := net.SplitHostPort(r.RemoteAddr)
	s := h.s
	if wait := s.logins.wait(user, ip); wait > 0 {
		s.opts.Metrics.login("backoff")
		return api.Identity{}, api.RetryAfter(api.Errorf(api.ErrUnauthorized,
			"too many failed logins for %s or from %s: try again in %s", user, ip, wait.Round(time.Second)), wait)
	}
	if err := (api.AuthArgs{User: user, Password: pw}).Validate(); err != nil {
		s.logins.failed(user, ip)
		return api.Identity{}, err
	}
	id, err := s.c.Authenticate(r.Context(), core.Credentials{User: user, Password: pw, Remote: r.RemoteAddr})
	if err != nil {
		s.logins.failed(user, ip)
		s.opts.Metrics.login("failed")
		return api.Identity{}, err
	}
	s.logins.succeeded(user, ip)
	s.opts.Metrics.login("ok")
	h.auth.put(k, id)
	return id, nil
}

type handlerFunc func(w http.ResponseWriter, r *http.Request, id api.Identity) error

// authed wraps a handler: authentication, then the handler; its error is
// the response.
func (h *httpAPI) authed(f handlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		// A POST must say it carries JSON: a page elsewhere cannot make a
		// browser send that to us without CORS allowing it (none is), so
		// Basic credentials a browser remembers cannot be used from it.
		if r.Method == http.MethodPost && !strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") {
			writeError(w, r, api.Errorf(api.ErrBadRequest, "POST bodies are JSON: send Content-Type: application/json (an empty object {} when there is nothing to say)"))
			return
		}
		id, err := h.identity(r)
		if err == nil {
			err = f(w, r, id)
		}
		if err != nil {
			writeError(w, r, err)
		}
	}
}

// decode reads a JSON body into v: bounded, unknown fields refused.
func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil && !errors.Is(err, io.EOF) {
		return api.Errorf(api.ErrBadRequest, "request body: %v", err)
	}
	return nil
}

func queryFlag(r *http.Request, name string) bool {
	v := r.URL.Query().Get(name)
	return v == "1" || v == "true" || v == "yes"
}

func (h *httpAPI) routes() http.Handler {
	m := http.NewServeMux()
	var c *core.Controller // nil when only the routes' documentation is built
	if h.s != nil {
		c = h.s.c
	}
	h.route(m, "GET /api/v1/whoami", routeDoc{Summary: "Who the caller is, and the Usher domain", Query: []string{}, Body: nil, Reply: api.AuthReply{}}, (func(w http.ResponseWriter, r *http.Request, id api.Identity) error {
		writeJSON(w, http.StatusOK, api.AuthReply{Identity: id, Domain: c.Domain()})
		return nil
	}))
	h.route(m, "GET /api/v1/vms", routeDoc{Summary: "List VMs (yours; admins: everyone’s with all=1)", Query: []string{"all", "cluster", "status", "lists", "vms"}, Body: nil, Reply: &api.ListReply{}}, (func(w http.ResponseWriter, r *http.Request, id api.Identity) error {
		q := r.URL.Query()
		a := api.ListArgs{All: queryFlag(r, "all"), Cluster: q.Get("cluster"), Status: queryFlag(r, "status"), Lists: queryFlag(r, "lists")}
		if set := q.Get("vms"); set != "" {
			names, err := h.expand(r.Context(), id, set, a.All)
			if err != nil {
				return err
			}
			a.Names = names
		}
		if err := a.Validate(); err != nil {
			return err
		}
		rep, err := c.List(r.Context(), id, a)
		if err != nil {
			return err
		}
		if rep.VMs == nil {
			rep.VMs = []*api.VM{}
		}
		writeJSON(w, http.StatusOK, rep)
		return nil
	}))
	h.route(m, "GET /api/v1/vms/{vm}", routeDoc{Summary: "One VM", Query: []string{"status"}, Body: nil, Reply: &api.VM{}}, (func(w http.ResponseWriter, r *http.Request, id api.Identity) error {
		names, err := h.expand(r.Context(), id, r.PathValue("vm"), id.Admin)
		if err != nil {
			return err
		}
		if len(names) != 1 {
			return api.Errorf(api.ErrBadRequest, "%q names %d VMs; GET /api/v1/vms?vms=SET lists sets", r.PathValue("vm"), len(names))
		}
		rep, err := c.List(r.Context(), id, api.ListArgs{Names: names, Status: queryFlag(r, "status"), All: id.Admin})
		if err != nil {
			return err
		}
		if len(rep.VMs) == 0 {
			return api.Errorf(api.ErrNotFound, "no VM %s", names[0])
		}
		writeJSON(w, http.StatusOK, rep.VMs[0])
		return nil
	}))
	h.route(m, "POST /api/v1/vms", routeDoc{Summary: "Start VMs in a cluster (?async=1: answer at once with an operation)", Query: []string{"async"}, Body: api.StartArgs{}, Reply: &api.Result{}}, (func(w http.ResponseWriter, r *http.Request, id api.Identity) error {
		var a api.StartArgs
		if err := decode(r, &a); err != nil {
			return err
		}
		if err := a.Validate(); err != nil {
			return err
		}
		return h.async(w, r, id, "start", func(ctx context.Context) (*api.Result, error) { return c.Start(ctx, id, a) })
	}))
	h.route(m, "GET /api/v1/operations", routeDoc{Summary: "Your asynchronous operations (admins: everyone’s with all=1)", Query: []string{"all"}, Body: nil, Reply: opList{}}, (func(w http.ResponseWriter, r *http.Request, id api.Identity) error {
		writeJSON(w, http.StatusOK, opList{h.ops.list(id, queryFlag(r, "all"))})
		return nil
	}))
	h.route(m, "GET /api/v1/operations/{id}", routeDoc{Summary: "One asynchronous operation", Query: []string{}, Body: nil, Reply: api.Operation{}}, (h.operation(false)))
	h.route(m, "GET /api/v1/operations/{id}/wait", routeDoc{Summary: "Wait for an asynchronous operation to end (timeout=30s, up to 10m)", Query: []string{"timeout"}, Body: nil, Reply: api.Operation{}}, (h.operation(true)))
	h.route(m, "POST /api/v1/vms/{set}/{action}", routeDoc{Summary: "An operation (pause, resume, shutdown, reboot, hibernate, restore, destroy, cycle), migrate or forget on a VM set (?async=1)", Query: []string{"async"}, Body: actionBody{}, Reply: &api.Result{}}, (h.action))
	h.route(m, "POST /api/v1/plan", routeDoc{Summary: "Dry-run a request through the policy chain: what it would do and the decision trace", Query: []string{}, Body: api.PlanArgs{}, Reply: &api.Result{}}, (func(w http.ResponseWriter, r *http.Request, id api.Identity) error {
		var a api.PlanArgs
		if err := decode(r, &a); err != nil {
			return err
		}
		if err := a.Validate(); err != nil {
			return err
		}
		res, err := c.Plan(r.Context(), id, a)
		return result(w, res, err)
	}))
	h.route(m, "GET /api/v1/nodes", routeDoc{Summary: "The LNMs (physical nodes)", Query: []string{"status"}, Body: nil, Reply: &api.ListLNMsReply{}}, (func(w http.ResponseWriter, r *http.Request, id api.Identity) error {
		a := api.ListLNMsArgs{Status: queryFlag(r, "status")}
		if err := a.Validate(); err != nil {
			return err
		}
		rep, err := c.ListLNMs(r.Context(), id, a)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, rep)
		return nil
	}))
	h.route(m, "POST /api/v1/nodes/{node}/{action}", routeDoc{Summary: "Isolate, drain or restore a node (admins; action isolate, drain, restore)", Query: []string{}, Body: nodeModeBody{}, Reply: &api.LNM{}}, (func(w http.ResponseWriter, r *http.Request, id api.Identity) error {
		var body nodeModeBody
		if err := decode(r, &body); err != nil {
			return err
		}
		a := api.SetLNMModeArgs{LNM: r.PathValue("node"), Reason: body.Reason}
		switch r.PathValue("action") {
		case "isolate":
			a.Mode = api.ModeIsolated
		case "drain":
			a.Mode = api.ModeDraining
		case "restore":
			a.Mode = api.ModeActive
		default:
			return api.Errorf(api.ErrNotFound, "unknown node action %q (isolate, drain, restore)", r.PathValue("action"))
		}
		if err := a.Validate(); err != nil {
			return err
		}
		l, err := c.SetLNMMode(r.Context(), id, a)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, l)
		return nil
	}))
	resv := func(action string) handlerFunc {
		return func(w http.ResponseWriter, r *http.Request, id api.Identity) error {
			var a api.ReservationsArgs
			switch action {
			case api.ResList:
				a.All = queryFlag(r, "all")
			case api.ResCreate, api.ResExtend:
				if err := decode(r, &a); err != nil {
					return err
				}
			}
			a.Action = action
			if action != api.ResList && action != api.ResCreate {
				a.ID = r.PathValue("id")
			}
			rep, err := c.Reservations(r.Context(), id, a)
			if err != nil {
				return err
			}
			writeJSON(w, http.StatusOK, rep)
			return nil
		}
	}
	h.route(m, "GET /api/v1/reservations", routeDoc{Summary: "Reservations (yours; admins: everyone’s with all=1)", Query: []string{"all"}, Body: nil, Reply: api.ReservationsReply{}}, resv(api.ResList))
	h.route(m, "POST /api/v1/reservations", routeDoc{Summary: "Create a reservation (admins): user, cluster, mem_mb, vcpus, lnms, start, end or for, on_end", Query: []string{}, Body: api.ReservationsArgs{}, Reply: api.ReservationsReply{}}, resv(api.ResCreate))
	h.route(m, "POST /api/v1/reservations/{id}/extend", routeDoc{Summary: "Extend a reservation (owner as policy allows, admins): end or for", Query: []string{}, Body: api.ReservationsArgs{}, Reply: api.ReservationsReply{}}, resv(api.ResExtend))
	h.route(m, "DELETE /api/v1/reservations/{id}", routeDoc{Summary: "Cancel a reservation (owner, admins)", Query: []string{}, Body: nil, Reply: api.ReservationsReply{}}, resv(api.ResCancel))
	h.route(m, "GET /api/v1/clusters", routeDoc{Summary: "Virtual clusters (admins: everyone’s with all=1)", Query: []string{"all"}, Body: nil, Reply: api.ClustersReply{}}, (func(w http.ResponseWriter, r *http.Request, id api.Identity) error {
		rep, err := c.Clusters(r.Context(), id, api.ClustersArgs{All: queryFlag(r, "all")})
		if err != nil {
			return err
		}
		if rep.Clusters == nil {
			rep.Clusters = []api.Cluster{}
		}
		writeJSON(w, http.StatusOK, rep)
		return nil
	}))
	h.route(m, "GET /api/v1/images", routeDoc{Summary: "The site image store", Query: []string{}, Body: nil, Reply: api.ImagesReply{}}, (func(w http.ResponseWriter, r *http.Request, id api.Identity) error {
		rep, err := h.s.images(r.Context(), id, api.Empty{})
		if err == nil {
			writeJSON(w, http.StatusOK, rep)
		}
		return err
	}))
	keys := func(action string) handlerFunc {
		return func(w http.ResponseWriter, r *http.Request, id api.Identity) error {
			a := api.KeysArgs{Action: action, User: r.URL.Query().Get("user"), Key: r.PathValue("key")}
			if action == api.KeysAdd {
				var body keyBody
				if err := decode(r, &body); err != nil {
					return err
				}
				a.Key = body.Key
			}
			if err := a.Validate(); err != nil {
				return err
			}
			rep, err := h.s.keys(r.Context(), id, a)
			if err == nil {
				writeJSON(w, http.StatusOK, rep)
			}
			return err
		}
	}
	h.route(m, "GET /api/v1/keys", routeDoc{Summary: "Your SSH public keys (admins: user=U)", Query: []string{"user"}, Body: nil, Reply: api.KeysReply{}}, (keys(api.KeysList)))
	h.route(m, "POST /api/v1/keys", routeDoc{Summary: "Register an SSH public key", Query: []string{"user"}, Body: keyBody{}, Reply: api.KeysReply{}}, (keys(api.KeysAdd)))
	h.route(m, "DELETE /api/v1/keys/{key}", routeDoc{Summary: "Remove an SSH public key (the line, its fingerprint or its comment)", Query: []string{"user"}, Body: nil, Reply: api.KeysReply{}}, (keys(api.KeysRemove)))
	tokens := func(action string) handlerFunc {
		return func(w http.ResponseWriter, r *http.Request, id api.Identity) error {
			a := api.TokensArgs{Action: action, User: r.URL.Query().Get("user"), ID: r.PathValue("id")}
			if action == api.TokensCreate {
				var body tokenBody
				if err := decode(r, &body); err != nil {
					return err
				}
				a.Name, a.Expires = body.Name, body.Expires
			}
			viaToken := strings.HasPrefix(r.Header.Get("Authorization"), "Bearer ")
			rep, err := h.s.tokens(r.Context(), id, a, viaToken)
			if err == nil {
				writeJSON(w, http.StatusOK, rep)
			}
			return err
		}
	}
	h.route(m, "GET /api/v1/tokens", routeDoc{Summary: "Your API tokens (admins: user=U)", Query: []string{"user"}, Body: nil, Reply: api.TokensReply{}}, (tokens(api.TokensList)))
	h.route(m, "POST /api/v1/tokens", routeDoc{Summary: "Make an API token (its secret is in this answer only)", Query: []string{}, Body: tokenBody{}, Reply: api.TokensReply{}}, (tokens(api.TokensCreate)))
	h.route(m, "DELETE /api/v1/tokens/{id}", routeDoc{Summary: "Revoke an API token", Query: []string{"user"}, Body: nil, Reply: api.TokensReply{}}, (tokens(api.TokensRevoke)))
	h.route(m, "GET /api/v1/policy", routeDoc{Summary: "The policy scripts’ status (admins)", Query: []string{}, Body: nil, Reply: api.PolicyReply{}}, (func(w http.ResponseWriter, r *http.Request, id api.Identity) error {
		if !id.Admin {
			return api.Errorf(api.ErrForbidden, "policy status needs an admin")
		}
		if h.s.opts.Policy == nil {
			return api.Errorf(api.ErrUnavailable, "no policy host")
		}
		rep, err := h.s.opts.Policy(r.Context(), id, api.PolicyArgs{Action: "status"})
		if err == nil {
			writeJSON(w, http.StatusOK, rep)
		}
		return err
	}))
	h.route(m, "GET /api/v1/events", routeDoc{Summary: "Server-Sent Events of your VMs (admins: all=1), resumable with Last-Event-ID", Query: []string{"cluster", "all", "after"}, Body: nil, Reply: nil}, (h.events))
	m.Handle("GET /metrics", h.metricsHandler())
	m.HandleFunc("GET /api/v1/openapi.json", func(w http.ResponseWriter, r *http.Request) {
		b, err := OpenAPI()
		if err != nil {
			writeError(w, r, err)
			return
		}
		w.Header().Set("Content-Type", "application/openapi+json")
		w.Write(b)
	})
	ui := http.StripPrefix("/ui/", http.FileServerFS(webui.FS()))
	m.Handle("GET /ui/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		ui.ServeHTTP(w, r)
	}))
	m.Handle("GET /{$}", http.RedirectHandler("/ui/", http.StatusFound))
	m.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, r, api.Errorf(api.ErrNotFound, "no resource %s %s (see docs/http-api.md)", r.Method, r.URL.Path))
	})
	return m
}

// result answers a request's result: 200, or the request's error.
func result(w http.ResponseWriter, res *api.Result, err error) error {
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, res)
	return nil
}

// action serves POST /api/v1/vms/{set}/{action}.
func (h *httpAPI) action(w http.ResponseWriter, r *http.Request, id api.Identity) error {
	var body actionBody
	if err := decode(r, &body); err != nil {
		return err
	}
	names, err := h.expand(r.Context(), id, r.PathValue("set"), id.Admin)
	if err != nil {
		return err
	}
	c := h.s.c
	switch action := r.PathValue("action"); action {
	case "migrate":
		a := api.MigrateArgs{ID: body.ID, VMs: names, LNMs: body.LNMs, Args: body.Args}
		if err := a.Validate(); err != nil {
			return err
		}
		return h.async(w, r, id, "migrate", func(ctx context.Context) (*api.Result, error) { return c.Migrate(ctx, id, a) })
	case "forget":
		a := api.ForgetArgs{VMs: names}
		if err := a.Validate(); err != nil {
			return err
		}
		return h.async(w, r, id, "forget", func(ctx context.Context) (*api.Result, error) { return c.Forget(ctx, id, a) })
	default:
		op, perr := api.ParseOp(action)
		if perr != nil {
			return api.Errorf(api.ErrNotFound, "no action %q: an operation (%s), migrate or forget", action, opNames())
		}
		a := api.OpArgs{ID: body.ID, Op: op, VMs: names, Args: body.Args, Force: body.Force}
		if err := a.Validate(); err != nil {
			return err
		}
		return h.async(w, r, id, "op_on", func(ctx context.Context) (*api.Result, error) { return c.OpOn(ctx, id, a) })
	}
}

func opNames() string {
	var s []string
	for _, op := range api.Ops() {
		s = append(s, string(op))
	}
	return strings.Join(s, ", ")
}

// expand resolves a VM set expression (the shell's: names, short names,
// ranges, /regex/, @cluster) against the VMs the caller may see.
func (h *httpAPI) expand(ctx context.Context, id api.Identity, set string, all bool) ([]string, error) {
	a := api.ListArgs{All: all && id.Admin}
	// Full names only (what scripts and the console send): look just those
	// up, not every VM the caller may see (an admin's is the whole site).
	if items := client.SplitSet(set); len(items) > 0 && len(items) <= api.MaxRequestVMs {
		full := true
		for _, it := range items {
			full = full && api.ValidVMName(it) == nil && strings.HasSuffix(it, "."+h.s.c.Domain()) && strings.Count(it, ".") >= 2
		}
		if full {
			a.Names = items
		}
	}
	rep, err := h.s.c.List(ctx, id, a)
	if err != nil {
		return nil, err
	}
	names, err := client.ExpandVMs(set, rep.VMs, h.s.c.Domain())
	if errors.Is(err, client.ErrNoMatch) {
		return nil, api.Errorf(api.ErrNotFound, "%v", err)
	}
	if err != nil {
		return nil, api.Errorf(api.ErrBadRequest, "%v", err)
	}
	if len(names) == 0 {
		return nil, api.Errorf(api.ErrNotFound, "%q names none of your VMs", set)
	}
	return names, nil
}

// ---------------------------------------------------------------------------
// events

// replay keeps the most recent events (everyone's) in a ring, fed by one
// watch of the controller's events: every HTTP event stream reads it,
// filtered for its user, so a stream that reconnects with Last-Event-ID
// resumes exactly where it was, and a thousand streams cost one feed.
// Streams follow positions in the ring (events are numbered when made,
// and two made at once may arrive in either order).
type replay struct {
	mu      sync.Mutex
	ring    []api.Event
	total   uint64        // events added; the next one's position
	floor   uint64        // positions below floor are gone or may be missing
	changed chan struct{} // closed (and replaced) when events arrive
}

func newReplay(n int) *replay {
	return &replay{ring: make([]api.Event, n), changed: make(chan struct{})}
}

func (r *replay) add(evs []api.Event) {
	if len(evs) == 0 {
		return
	}
	r.mu.Lock()
	for _, ev := range evs {
		r.ring[r.total%uint64(len(r.ring))] = ev
		r.total++
	}
	r.floor = max(r.floor, r.total-min(r.total, uint64(len(r.ring))))
	close(r.changed)
	r.changed = make(chan struct{})
	r.mu.Unlock()
}

// gap marks that events before now may be missing (the feed was cut).
func (r *replay) gap() {
	r.mu.Lock()
	r.floor = r.total
	r.mu.Unlock()
}

// from returns the kept events from position pos on and the position
// after them; whole is false when some are gone (the client must reload);
// changed is closed when more arrive.
func (r *replay) from(pos uint64) (evs []api.Event, next uint64, whole bool, changed <-chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if pos < r.floor {
		return nil, r.total, false, r.changed
	}
	for p := pos; p < r.total; p++ {
		evs = append(evs, r.ring[p%uint64(len(r.ring))])
	}
	return evs, r.total, true, r.changed
}

// after is the position just after the event numbered seq, if it is
// still kept; else (false) the stream cannot resume.
func (r *replay) after(seq uint64) (uint64, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for p := r.total; p > r.floor; p-- {
		if r.ring[(p-1)%uint64(len(r.ring))].Seq == seq {
			return p, true
		}
	}
	return 0, false
}

// end is the position of the next event.
func (r *replay) end() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.total
}

// follow feeds the ring from a watch of every event until ctx ends; a
// feed cut for lagging is reopened and the gap marked.
func (r *replay) follow(ctx context.Context, c *core.Controller, log interface{ Warn(string, ...any) }) {
	sys := api.Identity{User: "usher-http-replay", Admin: true}
	for ctx.Err() == nil {
		sub, err := c.Subscribe(sys, "", true)
		if err != nil {
			return
		}
		open := true
		for open {
			select {
			case <-sub.Ready():
				var evs []api.Event
				evs, open = sub.Take(4096)
				r.add(evs)
			case <-ctx.Done():
				c.Unsubscribe(sub)
				return
			}
		}
		c.Unsubscribe(sub)
		r.gap()
		log.Warn("HTTP event replay fell behind; streams that were behind reload")
	}
}

// visible is the feed's rule: a user's own events (and recovered); an
// admin watching, everyone's.
func visible(id api.Identity, watch bool, cluster string, ev api.Event) bool {
	if ev.PluginsOnly {
		return false
	}
	if ev.Type == api.EvRecovered || (watch && id.Admin) {
		return true
	}
	if ev.User != id.User {
		return false
	}
	return cluster == "" || ev.VM == nil || ev.VM.Cluster == cluster
}

// events serves an event stream (Server-Sent Events): "id: <seq>",
// "event: <type>", "data: <api.Event JSON>"; ": beat" comments every
// keepalive; "event: resync" when the client must reload its view (it fell
// more than the replay buffer behind, or resumed from an event no longer
// kept). A client that reconnects with Last-Event-ID (or ?after=N) first
// gets every event of its own after that one.
func (h *httpAPI) events(w http.ResponseWriter, r *http.Request, id api.Identity) error {
	q := r.URL.Query()
	cluster, watch := q.Get("cluster"), queryFlag(r, "all")
	if watch && !id.Admin {
		return api.Errorf(api.ErrForbidden, "watching every event needs an admin")
	}
	if err := (api.EventsArgs{Cluster: cluster}).Validate(); err != nil {
		return err
	}
	pos := h.replay.end()
	resume := r.Header.Get("Last-Event-ID")
	if resume == "" {
		resume = q.Get("after")
	}
	resumed := true
	if resume != "" {
		n, err := strconv.ParseUint(resume, 10, 64)
		if err != nil {
			return api.Errorf(api.ErrBadRequest, "Last-Event-ID %q: want an event number", resume)
		}
		pos, resumed = h.replay.after(n)
	}
	fl, ok := w.(http.Flusher)
	if !ok {
		return api.Errorf(api.ErrInternal, "streaming unsupported")
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	fmt.Fprint(w, ": ready\n\n")
	fl.Flush()
	beat := time.NewTicker(h.s.keepAlive())
	defer beat.Stop()
	if !resumed {
		fmt.Fprintf(w, "event: resync\ndata: {\"reason\":\"event %s is no longer kept; reload\"}\n\n", resume)
		fl.Flush()
		return nil
	}
	for {
		evs, next, whole, changed := h.replay.from(pos)
		if !whole {
			fmt.Fprint(w, "event: resync\ndata: {\"reason\":\"the stream fell behind; reload\"}\n\n")
			fl.Flush()
			return nil
		}
		pos = next
		for _, ev := range evs {
			if !visible(id, watch, cluster, ev) {
				continue
			}
			b, err := json.Marshal(ev)
			if err != nil {
				return nil
			}
			idLine := ""
			if ev.Seq != 0 { // operation events have no number of their own
				idLine = fmt.Sprintf("id: %d\n", ev.Seq)
			}
			if _, err := fmt.Fprintf(w, "%sevent: %s\ndata: %s\n\n", idLine, ev.Type, b); err != nil {
				return nil
			}
		}
		if len(evs) > 0 {
			fl.Flush()
		}
		select {
		case <-changed:
		case <-beat.C:
			if _, err := fmt.Fprint(w, ": beat\n\n"); err != nil {
				return nil
			}
			fl.Flush()
		case <-r.Context().Done():
			return nil
		}
	}
}

// keepAlive is the links' keepalive interval, used for stream beats.
func (s *Server) keepAlive() time.Duration {
	if k := s.opts.Server.Limits.KeepAlive; k > 0 {
		return k
	}
	return 5 * time.Second
}
