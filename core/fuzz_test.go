package core

import (
	"context"
	"encoding/json"
	"testing"
)

type nopHooks struct{}

func (nopHooks) Authenticate(context.Context, Credentials) (Identity, error) {
	return Identity{}, ErrAuthFailed
}
func (nopHooks) Authorize(context.Context, *Request) error          { return nil }
func (nopHooks) Request(context.Context, string, *Request) error    { return nil }
func (nopHooks) RegisterVM(context.Context, *Request, *ReqVM) error { return nil }
func (nopHooks) Notify(Event)                                       {}

type nopLink struct{}

func (nopLink) Start(context.Context, LNMStartArgs) (LNMResults, error)     { return LNMResults{}, nil }
func (nopLink) OpOn(context.Context, LNMOpArgs) (LNMResults, error)         { return LNMResults{}, nil }
func (nopLink) Migrate(context.Context, LNMMigrateArgs) (LNMResults, error) { return LNMResults{}, nil }
func (nopLink) Prepare(context.Context, LNMStartArgs) (LNMResults, error)   { return LNMResults{}, nil }
func (nopLink) Receive(context.Context, ReceiveArgs) error                  { return nil }
func (nopLink) Details(context.Context, NamesArgs) (DetailsReply, error)    { return DetailsReply{}, nil }

// FuzzHandleReport feeds arbitrary LNM report frames (the decoder of the
// LNM event stream plus the state machine behind it): nothing may panic,
// and the indices must stay consistent.
func FuzzHandleReport(f *testing.F) {
	f.Add([]byte(`{"changes":[{"name":"web1.alice.usher.local","state":"running","mem_mb":128,"vcpus":1}]}`))
	f.Add([]byte(`{"changes":[{"name":"rogue","state":"running"},{"name":"rogue","state":"missing"}]}`))
	f.Add([]byte(`{"changes":[{"name":"db1.bob.usher.local","state":"missing","reason":"crashed"}],"usage":{"db1.bob.usher.local":{"cpu":{"m1":1}}}}`))
	f.Add([]byte(`{"node":{"vms":3,"free_mem_mb":-5},"beat":true}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var r LNMReport
		if json.Unmarshal(b, &r) != nil {
			return
		}
		c := New(Config{Domain: "usher.local"}, nopHooks{})
		gen, err := c.AttachLNM(context.Background(), NodeInfo{Name: "n1"}, nil, nopLink{}, []Domain{{Name: "web1.alice.usher.local", State: StateRunning}})
		if err != nil {
			t.Fatal(err)
		}
		c.HandleReport("n1", gen, r)
		c.HandleReport("n1", gen, r)
		c.DetachLNM("n1", gen, "fuzz")
		s := c.State()
		s.mu.RLock()
		defer s.mu.RUnlock()
		n := 0
		for _, o := range s.owners {
			n += len(o)
		}
		if n != len(s.vms) {
			t.Fatalf("owner index holds %d VMs, state %d", n, len(s.vms))
		}
		for name, v := range s.vms {
			if v.Name != name || s.clusters[clusterKey{v.Owner, v.Cluster}] == nil {
				t.Fatalf("index broken for %q", name)
			}
		}
	})
}
