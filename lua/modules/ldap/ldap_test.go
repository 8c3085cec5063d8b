package ldap

import "testing"

func TestLDAPFilterEscaping(t *testing.T) {
	f, err := filter("(&(objectClass=posixAccount)(uid=%s))", []string{"*)(uid=*"})
	if err != nil {
		t.Fatal(err)
	}
	if f != `(&(objectClass=posixAccount)(uid=\2a\29\28uid=\2a))` {
		t.Fatalf("got %s", f)
	}
	for _, c := range []struct {
		f    string
		vals []string
	}{{"(uid=%d)", []string{"1"}}, {"(uid=%s)", nil}, {"(uid=x)", []string{"y"}}, {"(uid=%s", []string{"a"}}} {
		if _, err := filter(c.f, c.vals); err == nil {
			t.Errorf("%q %v accepted", c.f, c.vals)
		}
	}
}
