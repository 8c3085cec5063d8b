package repl

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/usher-vm/usher/api"

	"github.com/usher-vm/usher/client"
)

var update = flag.Bool("update", false, "rewrite testdata/golden/*.json")

// volatile keys are replaced before comparing JSON with the golden files.
var volatile = map[string]bool{"created": true, "recovery": true, "time": true, "since": true, "reported_at": true,
	"version": true, "us": true, "id": true, "seq": true, "usage": true, "controller": true}

func normalise(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			if _, isObj := e.(map[string]any); volatile[k] || (k == "status" && isObj) {
				x[k] = "<volatile>"
				continue
			}
			x[k] = normalise(e)
		}
	case []any:
		for i, e := range x {
			x[i] = normalise(e)
		}
	}
	return v
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	var v any
	if err := json.Unmarshal(got, &v); err != nil {
		t.Fatalf("%s: output is not JSON: %v\n%s", name, err, got)
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	enc.Encode(normalise(v))
	norm := buf.Bytes()
	path := filepath.Join("testdata", "golden", name+".json")
	if *update {
		if err := os.WriteFile(path, norm, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./repl -run Golden -update)", err)
	}
	if !bytes.Equal(want, norm) {
		t.Errorf("%s: JSON differs from %s:\n--- got\n%s\n--- want\n%s", name, path, norm, want)
	}
}

func TestJSONGolden(t *testing.T) {
	s := testSite(t, 2, 0)
	alice := connect(t, s, "alice")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	steps := []struct{ name, line string }{
		{"start", "start -n web -c 2 image=debian"},
		{"list", "list"},
		{"clusters", "clusters"},
		{"whoami", "whoami"},
		{"pause", "pause web1"},
		{"list_lnms", "list_lnms"},
		{"plan_start", "plan start -n web -c 1"},
		{"migrate", "migrate web2 node1"},
		{"destroy", "destroy web[1-2]"},
		{"list_empty", "list"},
	}
	for _, st := range steps {
		var out bytes.Buffer
		if err := Exec(ctx, alice, st.line, true, &out); err != nil {
			t.Fatalf("%s: %v\n%s", st.line, err, out.String())
		}
		golden(t, st.name, out.Bytes())
		switch st.name {
		case "start":
			waitCache(t, alice, "web1, web2 cached and running", func() bool {
				vs := alice.VMs()
				return len(vs) == 2 && vs[0].State == "running" && vs[1].State == "running"
			})
		case "pause":
			// the next list answers from the cache: wait for the pushed state
			waitCache(t, alice, "web1 paused", func() bool {
				v, ok := alice.VM("web1.alice.usher.local")
				return ok && v.State == "paused"
			})
		case "migrate":
			waitCache(t, alice, "web2 on node1", func() bool {
				v, ok := alice.VM("web2.alice.usher.local")
				return ok && v.LNM == "node1" && v.State == "running"
			})
		case "destroy":
			waitCache(t, alice, "no VMs cached", func() bool { return len(alice.VMs()) == 0 })
		}
	}
}

// waitCache waits until cond holds, re-checking after every pushed event.
func waitCache(t *testing.T, c *client.Client, what string, cond func() bool) {
	t.Helper()
	ch := make(chan struct{}, 1)
	cancel := c.OnEvent(func(api.Event) {
		select {
		case ch <- struct{}{}:
		default:
		}
	})
	defer cancel()
	deadline := time.After(15 * time.Second)
	for !cond() {
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}
