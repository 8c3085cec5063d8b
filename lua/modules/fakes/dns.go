package fakes

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"

	mdns "github.com/miekg/dns"

	"github.com/usher-vm/usher/lua/modules/dns"
)

// DNS is an in-memory name server implementing dns.Backend.
type DNS struct {
	mu      sync.Mutex
	records map[string][]string // "name TYPE" → data
	keys    map[string]bool
	down    atomic.Bool
}

// Records returns the data of the records of name and typ.
func (d *DNS) Records(name, typ string) []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.records[mdns.Fqdn(strings.ToLower(name))+" "+strings.ToUpper(typ)]...)
}

// Update applies u when its key is one of fake_dns_keys.
func (d *DNS) Update(_ context.Context, u dns.Update) error {
	if d.down.Load() {
		return &dns.Error{Rcode: -1, Err: errDown()}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.keys[mdns.Fqdn(u.Key)] {
		return &dns.Error{Rcode: mdns.RcodeNotAuth, Err: fmt.Errorf("dns update of %s refused by %s: NOTAUTH (TSIG BADKEY)", u.Zone, u.Server)}
	}
	zone := mdns.Fqdn(strings.ToLower(u.Zone))
	for _, set := range [][]dns.RR{u.Remove, u.Add} {
		for _, r := range set {
			if err := dns.CheckRR(r); err != nil {
				return &dns.Error{Rcode: -1, Err: err}
			}
			if n := mdns.Fqdn(strings.ToLower(r.Name)); n != zone && !strings.HasSuffix(n, "."+zone) {
				return &dns.Error{Rcode: mdns.RcodeNotZone, Err: fmt.Errorf("dns update: %s is not in zone %s: NOTZONE", r.Name, u.Zone)}
			}
		}
	}
	for _, r := range u.Remove {
		k := mdns.Fqdn(strings.ToLower(r.Name)) + " " + strings.ToUpper(r.Type)
		if r.Data == "" {
			delete(d.records, k)
			continue
		}
		var keep []string
		for _, v := range d.records[k] {
			if v != fakeData(r) {
				keep = append(keep, v)
			}
		}
		d.records[k] = keep
	}
	for _, r := range u.Add {
		k := mdns.Fqdn(strings.ToLower(r.Name)) + " " + strings.ToUpper(r.Type)
		v := fakeData(r)
		dup := false
		for _, have := range d.records[k] {
			dup = dup || have == v
		}
		if !dup {
			d.records[k] = append(d.records[k], v)
		}
	}
	return nil
}

func fakeData(r dns.RR) string {
	switch strings.ToUpper(r.Type) {
	case "PTR", "CNAME":
		return mdns.Fqdn(r.Data)
	}
	return r.Data
}

// Lookup answers from the records.
func (d *DNS) Lookup(_ context.Context, _, name, typ string) ([]string, error) {
	if d.down.Load() {
		return nil, &dns.Error{Rcode: -1, Err: errDown()}
	}
	return d.Records(name, typ), nil
}
