package lua

import (
	"context"
	"io"
	"sync"

	"github.com/usher-vm/usher/api"
)

// recorder is the engine tests' core.Actions: it records what timers ask for.
type recorder struct {
	mu  sync.Mutex
	log []map[string]any
}

func (r *recorder) OpOn(_ context.Context, _ api.Identity, a api.OpArgs) (*api.Result, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.log = append(r.log, map[string]any{"kind": "op", "op": string(a.Op), "vms": a.VMs})
	return &api.Result{Requested: len(a.VMs)}, nil
}

func (r *recorder) Migrate(_ context.Context, _ api.Identity, a api.MigrateArgs) (*api.Result, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.log = append(r.log, map[string]any{"kind": "migrate", "vms": a.VMs, "lnms": a.LNMs})
	return &api.Result{Requested: len(a.VMs)}, nil
}

// syncWriter serialises writes to w.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(b)
}
