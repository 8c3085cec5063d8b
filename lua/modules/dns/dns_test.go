package dns

import "testing"

func TestCheckRR(t *testing.T) {
	for _, r := range []RR{
		{Name: "web1.usher.test", Type: "A", Data: "10.0.0.1"},
		{Name: "web1.usher.test", Type: "AAAA", Data: "fd00::1"},
		{Name: "1.0.0.10.in-addr.arpa", Type: "PTR", Data: "web1.usher.test"},
		{Name: "web1.usher.test", Type: "A"}, // a removal of the RRset
	} {
		if err := CheckRR(r); err != nil {
			t.Errorf("%+v: %v", r, err)
		}
	}
	for _, r := range []RR{
		{Name: "web1.usher.test", Type: "A", Data: "fd00::1"},
		{Name: "web1.usher.test", Type: "AAAA", Data: "10.0.0.1"},
		{Name: "web1.usher.test", Type: "NOPE", Data: "x"},
		{Name: "web1.usher.test", Type: "TXT", Data: "a\nb"},
		{Name: "web1.usher.test", Type: "A", Data: "10.0.0.1; x"},
	} {
		if err := CheckRR(r); err == nil {
			t.Errorf("%+v accepted", r)
		}
	}
	if _, err := buildRR(RR{Name: "web1.usher.test", Type: "A"}, true); err == nil {
		t.Error("an addition without data accepted")
	}
}

func TestNewClientRefuses(t *testing.T) {
	if _, err := NewClient(Config{Servers: []string{"ns1"}}, 0); err == nil {
		t.Error("server without port accepted")
	}
	if _, err := NewClient(Config{Servers: []string{"ns1:53"}, Keys: map[string]TSIGKey{"k.": {Algorithm: "md5", Secret: "eA=="}}}, 0); err == nil {
		t.Error("unknown algorithm accepted")
	}
	if _, err := NewClient(Config{Servers: []string{"ns1:53"}, Keys: map[string]TSIGKey{"k.": {}}}, 0); err == nil {
		t.Error("key without secret accepted")
	}
}
