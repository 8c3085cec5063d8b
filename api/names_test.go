package api

import "testing"

func TestNames(t *testing.T) {
	for _, ok := range []string{"a", "web1", "my-vm", "x9"} {
		if err := ValidLabel(ok); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "-a", "a-", "A", "a.b", "a b", "../x", "é", string(make([]byte, 64))} {
		if ValidLabel(bad) == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	short, owner, ok := ParseFullName("web12.alice.usher.local", "usher.local")
	if !ok || short != "web12" || owner != "alice" {
		t.Fatalf("parse: %q %q %v", short, owner, ok)
	}
	for _, n := range []string{"web1.usher.local", "web1.alice.other.org", ".alice.usher.local", "a.b.c.usher.local", "usher.local"} {
		if _, _, ok := ParseFullName(n, "usher.local"); ok {
			t.Errorf("%q adopted", n)
		}
	}
	if ClusterOf("sneetch12") != "sneetch" || ClusterOf("db-3") != "db" || ClusterOf("42") != "42" {
		t.Fatal("ClusterOf")
	}
	if _, err := ParseOp("explode"); err == nil {
		t.Fatal("unknown op accepted")
	}
}
