package client

import (
	"reflect"
	"strings"
	"testing"

	"github.com/usher-vm/usher/api"
)

func vms(names ...string) []*api.VM {
	var out []*api.VM
	for _, n := range names {
		short, owner, _ := api.ParseFullName(n, "usher.local")
		out = append(out, &api.VM{Name: n, Short: short, Owner: owner, Cluster: api.ClusterOf(short)})
	}
	return out
}

func TestExpandVMs(t *testing.T) {
	cache := vms("web1.alice.usher.local", "web2.alice.usher.local", "web10.alice.usher.local",
		"db1.alice.usher.local", "db2.alice.usher.local")
	cases := []struct {
		expr string
		want []string
	}{
		{"web1", []string{"web1.alice.usher.local"}},
		{"web[1-2]", []string{"web1.alice.usher.local", "web2.alice.usher.local"}},
		{"web[1,10]", []string{"web1.alice.usher.local", "web10.alice.usher.local"}},
		{"/db.*/", []string{"db1.alice.usher.local", "db2.alice.usher.local"}},
		{"@db", []string{"db1.alice.usher.local", "db2.alice.usher.local"}},
		{"db", []string{"db1.alice.usher.local", "db2.alice.usher.local"}},
		{"web1, web1 db2.alice.usher.local", []string{"web1.alice.usher.local", "db2.alice.usher.local"}},
		{"web", []string{"web1.alice.usher.local", "web2.alice.usher.local", "web10.alice.usher.local"}},
	}
	for _, c := range cases {
		got, err := ExpandVMs(c.expr, cache, "usher.local")
		if err != nil || !reflect.DeepEqual(got, c.want) {
			t.Errorf("%q: got %v, %v; want %v", c.expr, got, err, c.want)
		}
	}
	bad := map[string]string{
		"":                  "empty",
		"web3":              "no such VM",
		"web[1-3]":          "no such VM",
		"/(/":               "error parsing",
		"@nope":             "no cluster",
		"web[5-1]":          "empty",
		"web[1-9999999]":    "more than",
		"x.bob.usher.local": "no such VM",
		"web[1-2":           "missing",
	}
	for expr, want := range bad {
		if _, err := ExpandVMs(expr, cache, "usher.local"); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: got %v, want error containing %q", expr, err, want)
		}
	}
}

func TestExpandLNMs(t *testing.T) {
	known := []string{"node1", "node2", "node3", "big1"}
	got, err := ExpandLNMs("node[2-3],/big.*/", known)
	if err != nil || !reflect.DeepEqual(got, []string{"node2", "node3", "big1"}) {
		t.Fatalf("got %v %v", got, err)
	}
	if _, err := ExpandLNMs("node9", known); err == nil {
		t.Fatal("unknown LNM accepted")
	}
}

func TestSplitSet(t *testing.T) {
	got := SplitSet("a, b[1,2] /x, y/ c")
	want := []string{"a", "b[1,2]", "/x, y/", "c"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q", got)
	}
}

// TestHugeRangesRefusedBeforeExpansion: a range of more than MaxRangeSize
// names, however large its bounds (up to the largest int), is refused
// before any name is made.
func TestHugeRangesRefusedBeforeExpansion(t *testing.T) {
	for _, expr := range []string{"web[0-9223372036854775807]", "web[1-100001]", "web[0-99999,100000-100001]", "web[9223372036854775806-9223372036854775807,0-99999]"} {
		if names, err := ExpandRange(expr); err == nil || !strings.Contains(err.Error(), "more than") {
			t.Errorf("%s: %d names, err %v", expr, len(names), err)
		}
	}
	if _, err := ExpandRange("web[0-9223372036854775808]"); err == nil {
		t.Error("a bound past the largest int accepted")
	}
	names, err := ExpandRange("web[1-100000]")
	if err != nil || len(names) != MaxRangeSize {
		t.Fatalf("the largest range: %d names, %v", len(names), err)
	}
}
