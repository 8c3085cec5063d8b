package controller

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/usher-vm/usher/api"
)

// operations are the HTTP API's asynchronous requests: a request with
// ?async=1 answers 202 at once with an operation, runs on in a goroutine
// the HTTP server owns (it waits for them when it stops), and its end is
// announced on the event stream ("operation") of its user. Finished
// operations are kept for an hour, at most keep of them.
type operations struct {
	mu   sync.Mutex
	m    map[string]*opEntry
	keep int
	wg   sync.WaitGroup
}

type opEntry struct {
	op   api.Operation
	done chan struct{}
}

func newOperations(keep int) *operations {
	return &operations{m: map[string]*opEntry{}, keep: keep}
}

// run starts f as an operation of id and returns it.
func (o *operations) run(ctx context.Context, id api.Identity, method string, f func(ctx context.Context) (*api.Result, error), announce func(api.Operation)) api.Operation {
	b := make([]byte, 8)
	rand.Read(b)
	e := &opEntry{op: api.Operation{ID: hex.EncodeToString(b), User: id.User, Method: method, Status: api.OpRunning,
		Created: time.Now().UTC()}, done: make(chan struct{})}
	o.mu.Lock()
	o.gcLocked()
	o.m[e.op.ID] = e
	first := e.op // what the answer says: the goroutine changes e.op
	o.mu.Unlock()
	o.wg.Add(1)
	go func() {
		defer o.wg.Done()
		res, err := f(ctx)
		o.mu.Lock()
		e.op.Done = time.Now().UTC()
		if err != nil {
			e.op.Status, e.op.Error = api.OpFailed, api.AsError(err)
		} else {
			e.op.Status, e.op.Result = api.OpDone, res
		}
		op := e.op
		close(e.done)
		o.mu.Unlock()
		announce(op)
	}()
	return first
}

// gcLocked drops finished operations older than an hour, and the oldest
// finished ones beyond keep.
func (o *operations) gcLocked() {
	var finished []*opEntry
	for id, e := range o.m {
		if e.op.Status == api.OpRunning {
			continue
		}
		if time.Since(e.op.Done) > time.Hour {
			delete(o.m, id)
			continue
		}
		finished = append(finished, e)
	}
	if len(finished) > o.keep {
		sort.Slice(finished, func(i, j int) bool { return finished[i].op.Done.Before(finished[j].op.Done) })
		for _, e := range finished[:len(finished)-o.keep] {
			delete(o.m, e.op.ID)
		}
	}
}

// get returns an operation its user (or an admin) may see.
func (o *operations) get(id api.Identity, opID string) (*opEntry, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	e := o.m[opID]
	if e == nil || (e.op.User != id.User && !id.Admin) {
		return nil, api.Errorf(api.ErrNotFound, "no operation %q (finished ones are kept an hour)", opID)
	}
	return e, nil
}

func (o *operations) snapshot(e *opEntry) api.Operation {
	o.mu.Lock()
	defer o.mu.Unlock()
	return e.op
}

// list returns the user's operations (an admin's: everyone's with all).
func (o *operations) list(id api.Identity, all bool) []api.Operation {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := []api.Operation{}
	for _, e := range o.m {
		if e.op.User == id.User || (all && id.Admin) {
			out = append(out, e.op)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out
}

// async runs call as an operation when the request asks for it
// (?async=1), answering 202 with the operation; otherwise it runs it and
// answers its result.
func (h *httpAPI) async(w http.ResponseWriter, r *http.Request, id api.Identity, method string, call func(ctx context.Context) (*api.Result, error)) error {
	if !queryFlag(r, "async") {
		res, err := call(r.Context())
		return result(w, res, err)
	}
	// The operation outlives the request: it runs under the server's
	// context, not the request's.
	op := h.ops.run(h.ctx, id, method, call, func(op api.Operation) {
		h.replay.add([]api.Event{{Type: api.EvOperation, Time: op.Done, User: op.User, OK: op.Status == api.OpDone,
			Detail: api.StringMap{"id": op.ID, "method": op.Method, "status": op.Status}}})
	})
	w.Header().Set("Location", "/api/v1/operations/"+op.ID)
	writeJSON(w, http.StatusAccepted, op)
	return nil
}

// operation serves GET /api/v1/operations/{id}[/wait?timeout=30s].
func (h *httpAPI) operation(wait bool) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request, id api.Identity) error {
		e, err := h.ops.get(id, r.PathValue("id"))
		if err != nil {
			return err
		}
		if wait {
			d := 30 * time.Second
			if t := r.URL.Query().Get("timeout"); t != "" {
				if d, err = time.ParseDuration(t); err != nil || d < 0 || d > 10*time.Minute {
					return api.Errorf(api.ErrBadRequest, "timeout %q: a duration up to 10m", t)
				}
			}
			tm := time.NewTimer(d)
			defer tm.Stop()
			select {
			case <-e.done:
			case <-tm.C:
			case <-r.Context().Done():
				return nil
			}
		}
		writeJSON(w, http.StatusOK, h.ops.snapshot(e))
		return nil
	}
}
