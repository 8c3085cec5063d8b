package lua

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/miekg/dns"
	glua "github.com/yuin/gopher-lua"
)

// The dns module. Lua API:
//
//	dns.update{server = "ns1:53", zone = "usher.example.", key = "usher-key.",
//	           add = {{name =, type = "A", data = "10.0.0.5", ttl = 300}},
//	           remove = {{name =, type = "A", data = "10.0.0.5"}}}   -- no data: the whole RRset
//	  → true | nil, err, rcode        (RFC 2136 update signed with TSIG)
//	dns.lookup{server =, name =, type = "A"} → {"10.0.0.5", …} | nil, err
//	dns.ptr_name("10.0.0.5") → "5.0.0.10.in-addr.arpa."
//	dns.fqdn("a.b") → "a.b."

type dnsRR struct {
	name, typ, data string
	ttl             uint32
}

type dnsUpdate struct {
	server, zone, key string
	add, remove       []dnsRR
}

// dnsError carries the DNS response code (-1 for transport errors).
type dnsError struct {
	rcode int
	err   error
}

func (e *dnsError) Error() string { return e.err.Error() }

type dnsBackend interface {
	update(ctx context.Context, u dnsUpdate) error
	lookup(ctx context.Context, server, name, typ string) ([]string, error)
}

type dnsClient struct {
	cfg     DNSModuleConfig
	timeout time.Duration
	allowed map[string]bool
	secrets map[string]string // fqdn key name → secret
	algs    map[string]string
}

func newDNSClient(c DNSModuleConfig, timeout time.Duration) (*dnsClient, error) {
	dc := &dnsClient{cfg: c, timeout: timeout, allowed: map[string]bool{}, secrets: map[string]string{}, algs: map[string]string{}}
	for _, s := range c.Servers {
		if _, _, err := net.SplitHostPort(s); err != nil {
			return nil, fmt.Errorf("dns server %q: want host:port", s)
		}
		dc.allowed[s] = true
	}
	for name, k := range c.Keys {
		alg, err := tsigAlg(k.Algorithm)
		if err != nil {
			return nil, fmt.Errorf("dns key %s: %v", name, err)
		}
		if k.Secret == "" {
			return nil, fmt.Errorf("dns key %s: no secret", name)
		}
		dc.secrets[dns.Fqdn(name)] = k.Secret
		dc.algs[dns.Fqdn(name)] = alg
	}
	return dc, nil
}

func tsigAlg(a string) (string, error) {
	switch strings.ToLower(strings.TrimSuffix(a, ".")) {
	case "", "hmac-sha256":
		return dns.HmacSHA256, nil
	case "hmac-sha512":
		return dns.HmacSHA512, nil
	case "hmac-sha384":
		return dns.HmacSHA384, nil
	case "hmac-sha224":
		return dns.HmacSHA224, nil
	case "hmac-sha1":
		return dns.HmacSHA1, nil
	}
	return "", fmt.Errorf("unsupported TSIG algorithm %q", a)
}

func (c *dnsClient) check(server string) error {
	if !c.allowed[server] {
		return fmt.Errorf("dns: server %s is not in policy.modules.dns.servers", server)
	}
	return nil
}

func buildRR(r dnsRR, forAdd bool) (dns.RR, error) {
	name := dns.Fqdn(r.name)
	typ := strings.ToUpper(r.typ)
	if _, ok := dns.StringToType[typ]; !ok {
		return nil, fmt.Errorf("dns: unknown record type %q", r.typ)
	}
	if _, ok := dns.IsDomainName(name); !ok {
		return nil, fmt.Errorf("dns: bad name %q", r.name)
	}
	if strings.ContainsAny(r.data, "\n\r;") {
		return nil, fmt.Errorf("dns: bad record data %q", r.data)
	}
	switch typ {
	case "A":
		if ip := net.ParseIP(r.data); r.data != "" && (ip == nil || ip.To4() == nil) {
			return nil, fmt.Errorf("dns: %q is not an IPv4 address", r.data)
		}
	case "AAAA":
		if ip := net.ParseIP(r.data); r.data != "" && (ip == nil || ip.To4() != nil) {
			return nil, fmt.Errorf("dns: %q is not an IPv6 address", r.data)
		}
	case "PTR", "CNAME":
		if r.data != "" {
			if _, ok := dns.IsDomainName(r.data); !ok {
				return nil, fmt.Errorf("dns: bad target %q", r.data)
			}
			r.data = dns.Fqdn(r.data)
		}
	}
	if r.data == "" {
		if forAdd {
			return nil, fmt.Errorf("dns: record %s %s needs data", name, typ)
		}
		rr := &dns.ANY{Hdr: dns.RR_Header{Name: name, Rrtype: dns.StringToType[typ], Class: dns.ClassANY}}
		return rr, nil
	}
	ttl := r.ttl
	if ttl == 0 {
		ttl = 300
	}
	return dns.NewRR(fmt.Sprintf("%s %d IN %s %s", name, ttl, typ, r.data))
}

func (c *dnsClient) update(ctx context.Context, u dnsUpdate) error {
	if err := c.check(u.server); err != nil {
		return &dnsError{rcode: -1, err: err}
	}
	key := dns.Fqdn(u.key)
	secret, ok := c.secrets[key]
	if !ok {
		return &dnsError{rcode: -1, err: fmt.Errorf("dns: no TSIG key %q in policy.modules.dns.keys", u.key)}
	}
	m := new(dns.Msg)
	m.SetUpdate(dns.Fqdn(u.zone))
	var rem, add []dns.RR
	for _, r := range u.remove {
		rr, err := buildRR(r, false)
		if err != nil {
			return &dnsError{rcode: -1, err: err}
		}
		if _, any := rr.(*dns.ANY); any {
			m.RemoveRRset([]dns.RR{rr})
		} else {
			rem = append(rem, rr)
		}
	}
	if len(rem) > 0 {
		m.Remove(rem)
	}
	for _, r := range u.add {
		rr, err := buildRR(r, true)
		if err != nil {
			return &dnsError{rcode: -1, err: err}
		}
		add = append(add, rr)
	}
	if len(add) > 0 {
		m.Insert(add)
	}
	m.SetTsig(key, c.algs[key], 300, time.Now().Unix())
	cl := &dns.Client{Net: "tcp", Timeout: c.timeout, TsigSecret: map[string]string{key: secret}}
	r, _, err := cl.ExchangeContext(ctx, m, u.server)
	// A server refusing our key answers unsigned (or signed with an error),
	// which the client reports as a TSIG failure: the rcode says why.
	if r != nil && r.Rcode != dns.RcodeSuccess {
		msg := dns.RcodeToString[r.Rcode]
		if t := r.IsTsig(); t != nil && t.Error != 0 {
			msg += " (TSIG " + dns.RcodeToString[int(t.Error)] + ")"
		} else if err != nil {
			msg += " (" + err.Error() + ")"
		}
		return &dnsError{rcode: r.Rcode, err: fmt.Errorf("dns update of %s refused by %s: %s", u.zone, u.server, msg)}
	}
	if err != nil {
		return &dnsError{rcode: -1, err: fmt.Errorf("dns update of %s at %s: %w", u.zone, u.server, err)}
	}
	return nil
}

func (c *dnsClient) lookup(ctx context.Context, server, name, typ string) ([]string, error) {
	if err := c.check(server); err != nil {
		return nil, &dnsError{rcode: -1, err: err}
	}
	return dnsQuery(ctx, c.timeout, server, name, typ)
}

func dnsQuery(ctx context.Context, timeout time.Duration, server, name, typ string) ([]string, error) {
	t, ok := dns.StringToType[strings.ToUpper(typ)]
	if !ok {
		return nil, &dnsError{rcode: -1, err: fmt.Errorf("dns: unknown record type %q", typ)}
	}
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), t)
	cl := &dns.Client{Net: "tcp", Timeout: timeout}
	r, _, err := cl.ExchangeContext(ctx, m, server)
	if err != nil {
		return nil, &dnsError{rcode: -1, err: fmt.Errorf("dns lookup at %s: %w", server, err)}
	}
	if r.Rcode != dns.RcodeSuccess && r.Rcode != dns.RcodeNameError {
		return nil, &dnsError{rcode: r.Rcode, err: fmt.Errorf("dns lookup of %s: %s", name, dns.RcodeToString[r.Rcode])}
	}
	var out []string
	for _, rr := range r.Answer {
		if rr.Header().Rrtype != t {
			continue
		}
		out = append(out, rrData(rr))
	}
	return out, nil
}

// rrData is the presentation form of an RR's data.
func rrData(rr dns.RR) string {
	switch x := rr.(type) {
	case *dns.A:
		return x.A.String()
	case *dns.AAAA:
		return x.AAAA.String()
	case *dns.PTR:
		return x.Ptr
	case *dns.CNAME:
		return x.Target
	}
	h := rr.Header().String()
	return strings.TrimSpace(strings.TrimPrefix(rr.String(), h))
}

// --- Lua glue ---------------------------------------------------------------

func readRRs(L *glua.LState, t *glua.LTable, key string) []dnsRR {
	lt, ok := t.RawGetString(key).(*glua.LTable)
	if !ok {
		return nil
	}
	var out []dnsRR
	for i := 1; i <= lt.Len(); i++ {
		e, ok := lt.RawGetInt(i).(*glua.LTable)
		if !ok {
			L.ArgError(1, key+" must list {name=, type=, data=} tables")
		}
		r := dnsRR{name: luaString(e.RawGetString("name")), typ: luaString(e.RawGetString("type")), data: luaString(e.RawGetString("data"))}
		if r.typ == "" {
			r.typ = "A"
		}
		if n, ok := luaInt(e.RawGetString("ttl")); ok && n > 0 {
			r.ttl = uint32(n)
		}
		out = append(out, r)
	}
	return out
}

func (ls *lstate) dnsModule(b dnsBackend) *glua.LTable {
	return modTable(ls.L, map[string]glua.LGFunction{
		"update": func(L *glua.LState) int {
			t := L.CheckTable(1)
			u := dnsUpdate{server: luaString(t.RawGetString("server")), zone: luaString(t.RawGetString("zone")),
				key: luaString(t.RawGetString("key")), add: readRRs(L, t, "add"), remove: readRRs(L, t, "remove")}
			if u.server == "" || u.zone == "" || u.key == "" {
				L.ArgError(1, "server, zone and key are required")
			}
			if err := ls.netCall(func(ctx context.Context) error { return b.update(ctx, u) }); err != nil {
				rc := -1
				var de *dnsError
				if errors.As(err, &de) {
					rc = de.rcode
				}
				return pushErr(L, err, glua.LNumber(rc))
			}
			L.Push(glua.LTrue)
			return 1
		},
		"lookup": func(L *glua.LState) int {
			t := L.CheckTable(1)
			server, name, typ := luaString(t.RawGetString("server")), luaString(t.RawGetString("name")), luaString(t.RawGetString("type"))
			if typ == "" {
				typ = "A"
			}
			var out []string
			err := ls.netCall(func(ctx context.Context) error {
				var err error
				out, err = b.lookup(ctx, server, name, typ)
				return err
			})
			if err != nil {
				return pushErr(L, err)
			}
			L.Push(strList(L, out))
			return 1
		},
		"ptr_name": func(L *glua.LState) int {
			r, err := dns.ReverseAddr(L.CheckString(1))
			if err != nil {
				return pushErr(L, err)
			}
			L.Push(glua.LString(r))
			return 1
		},
		"fqdn": func(L *glua.LState) int { L.Push(glua.LString(dns.Fqdn(L.CheckString(1)))); return 1 },
	})
}
