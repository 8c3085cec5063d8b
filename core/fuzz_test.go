package core

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/usher-vm/usher/api"
	"github.com/usher-vm/usher/api/apitest"
)

type nopHooks struct{}

func (nopHooks) Authenticate(context.Context, Credentials) (api.Identity, error) {
	return api.Identity{}, api.ErrUnauthorized
}
func (nopHooks) Authorize(context.Context, *Request, *Decision) error       { return nil }
func (nopHooks) Request(context.Context, string, *Request, *Decision) error { return nil }
func (nopHooks) RegisterVM(context.Context, *Request, *Decision, int) error { return nil }
func (nopHooks) Notify(api.Event)                                           {}

// FuzzHandleReport feeds arbitrary LNM report frames (the decoder of the
// LNM event stream plus the state machine behind it): nothing may panic,
// and the indices must stay consistent.
func FuzzHandleReport(f *testing.F) {
	f.Add([]byte(`{"changes":[{"name":"web1.alice.usher.local","state":"running","mem_mb":128,"vcpus":1}]}`))
	f.Add([]byte(`{"changes":[{"name":"rogue","state":"running"},{"name":"rogue","state":"missing"}]}`))
	f.Add([]byte(`{"changes":[{"name":"db1.bob.usher.local","state":"missing","reason":"crashed"}],"usage":{"db1.bob.usher.local":{"cpu":{"m1":1}}}}`))
	f.Add([]byte(`{"node":{"vms":3,"free_mem_mb":-5},"beat":true}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var r api.Report
		if json.Unmarshal(b, &r) != nil {
			return
		}
		c := New(Config{Domain: "usher.local", Adopt: AdoptAlways}, nopHooks{})
		defer c.Close()
		gen, err := c.AttachLNM(context.Background(), api.Hello{Node: api.NodeInfo{Name: "n1", CPUs: 4, MemMB: 4096}}, apitest.NewNode("n1"), []api.Guest{{Name: "web1.alice.usher.local", State: api.StateRunning}})
		if err != nil {
			t.Fatal(err)
		}
		c.HandleReport("n1", gen, r)
		c.HandleReport("n1", gen, r)
		if err := c.State().Check(); err != nil {
			t.Fatalf("after the reports: %v", err)
		}
		c.DetachLNM("n1", gen, "fuzz")
		if err := c.State().Check(); err != nil {
			t.Fatalf("after the LNM left: %v", err)
		}
	})
}
