package dns

import (
	"context"
	"fmt"
	"net"
	"strings"
	"time"

	mdns "github.com/miekg/dns"
)

// RR is one resource record of an update ("" Data in a removal: the
// whole RRset).
type RR struct {
	Name, Type, Data string
	TTL              uint32
}

// Update is one RFC 2136 update of Zone at Server, signed with Key.
type Update struct {
	Server, Zone, Key string
	Add, Remove       []RR
}

// Error carries the DNS response code (-1 for transport errors); scripts
// get it as the third return value of dns.update.
type Error struct {
	Rcode int
	Err   error
}

func (e *Error) Error() string { return e.Err.Error() }

// Backend is what the dns table calls: the real Client, or a stand-in.
// Errors should be *Error to give scripts an rcode.
type Backend interface {
	Update(ctx context.Context, u Update) error
	Lookup(ctx context.Context, server, name, typ string) ([]string, error)
}

// Client is the real backend: TSIG-signed updates and lookups over TCP.
type Client struct {
	cfg     Config
	timeout time.Duration
	allowed map[string]bool
	secrets map[string]string // fqdn key name → secret
	algs    map[string]string
}

// NewClient checks c and makes a client whose every exchange is bounded
// by timeout.
func NewClient(c Config, timeout time.Duration) (*Client, error) {
	dc := &Client{cfg: c, timeout: timeout, allowed: map[string]bool{}, secrets: map[string]string{}, algs: map[string]string{}}
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
		dc.secrets[mdns.Fqdn(name)] = k.Secret
		dc.algs[mdns.Fqdn(name)] = alg
	}
	return dc, nil
}

func tsigAlg(a string) (string, error) {
	switch strings.ToLower(strings.TrimSuffix(a, ".")) {
	case "", "hmac-sha256":
		return mdns.HmacSHA256, nil
	case "hmac-sha512":
		return mdns.HmacSHA512, nil
	case "hmac-sha384":
		return mdns.HmacSHA384, nil
	case "hmac-sha224":
		return mdns.HmacSHA224, nil
	case "hmac-sha1":
		return mdns.HmacSHA1, nil
	}
	return "", fmt.Errorf("unsupported TSIG algorithm %q", a)
}

func (c *Client) check(server string) error {
	if !c.allowed[server] {
		return fmt.Errorf("dns: server %s is not in policy.modules.dns.servers", server)
	}
	return nil
}

// CheckRR validates a record as an update would (name, type, data of the
// type); stand-ins use it to refuse what a server would.
func CheckRR(r RR) error {
	_, err := buildRR(r, false)
	return err
}

func buildRR(r RR, forAdd bool) (mdns.RR, error) {
	name := mdns.Fqdn(r.Name)
	typ := strings.ToUpper(r.Type)
	if _, ok := mdns.StringToType[typ]; !ok {
		return nil, fmt.Errorf("dns: unknown record type %q", r.Type)
	}
	if _, ok := mdns.IsDomainName(name); !ok {
		return nil, fmt.Errorf("dns: bad name %q", r.Name)
	}
	if strings.ContainsAny(r.Data, "\n\r;") {
		return nil, fmt.Errorf("dns: bad record data %q", r.Data)
	}
	switch typ {
	case "A":
		if ip := net.ParseIP(r.Data); r.Data != "" && (ip == nil || ip.To4() == nil) {
			return nil, fmt.Errorf("dns: %q is not an IPv4 address", r.Data)
		}
	case "AAAA":
		if ip := net.ParseIP(r.Data); r.Data != "" && (ip == nil || ip.To4() != nil) {
			return nil, fmt.Errorf("dns: %q is not an IPv6 address", r.Data)
		}
	case "PTR", "CNAME":
		if r.Data != "" {
			if _, ok := mdns.IsDomainName(r.Data); !ok {
				return nil, fmt.Errorf("dns: bad target %q", r.Data)
			}
			r.Data = mdns.Fqdn(r.Data)
		}
	}
	if r.Data == "" {
		if forAdd {
			return nil, fmt.Errorf("dns: record %s %s needs data", name, typ)
		}
		rr := &mdns.ANY{Hdr: mdns.RR_Header{Name: name, Rrtype: mdns.StringToType[typ], Class: mdns.ClassANY}}
		return rr, nil
	}
	ttl := r.TTL
	if ttl == 0 {
		ttl = 300
	}
	return mdns.NewRR(fmt.Sprintf("%s %d IN %s %s", name, ttl, typ, r.Data))
}

// Update sends u signed with its key.
func (c *Client) Update(ctx context.Context, u Update) error {
	if err := c.check(u.Server); err != nil {
		return &Error{Rcode: -1, Err: err}
	}
	key := mdns.Fqdn(u.Key)
	secret, ok := c.secrets[key]
	if !ok {
		return &Error{Rcode: -1, Err: fmt.Errorf("dns: no TSIG key %q in policy.modules.dns.keys", u.Key)}
	}
	m := new(mdns.Msg)
	m.SetUpdate(mdns.Fqdn(u.Zone))
	var rem, add []mdns.RR
	for _, r := range u.Remove {
		rr, err := buildRR(r, false)
		if err != nil {
			return &Error{Rcode: -1, Err: err}
		}
		if _, any := rr.(*mdns.ANY); any {
			m.RemoveRRset([]mdns.RR{rr})
		} else {
			rem = append(rem, rr)
		}
	}
	if len(rem) > 0 {
		m.Remove(rem)
	}
	for _, r := range u.Add {
		rr, err := buildRR(r, true)
		if err != nil {
			return &Error{Rcode: -1, Err: err}
		}
		add = append(add, rr)
	}
	if len(add) > 0 {
		m.Insert(add)
	}
	m.SetTsig(key, c.algs[key], 300, time.Now().Unix())
	cl := &mdns.Client{Net: "tcp", Timeout: c.timeout, TsigSecret: map[string]string{key: secret}}
	r, _, err := cl.ExchangeContext(ctx, m, u.Server)
	// A server refusing our key answers unsigned (or signed with an error),
	// which the client reports as a TSIG failure: the rcode says why.
	if r != nil && r.Rcode != mdns.RcodeSuccess {
		msg := mdns.RcodeToString[r.Rcode]
		if t := r.IsTsig(); t != nil && t.Error != 0 {
			msg += " (TSIG " + mdns.RcodeToString[int(t.Error)] + ")"
		} else if err != nil {
			msg += " (" + err.Error() + ")"
		}
		return &Error{Rcode: r.Rcode, Err: fmt.Errorf("dns update of %s refused by %s: %s", u.Zone, u.Server, msg)}
	}
	if err != nil {
		return &Error{Rcode: -1, Err: fmt.Errorf("dns update of %s at %s: %w", u.Zone, u.Server, err)}
	}
	return nil
}

// Lookup asks server for the records of name and type.
func (c *Client) Lookup(ctx context.Context, server, name, typ string) ([]string, error) {
	if err := c.check(server); err != nil {
		return nil, &Error{Rcode: -1, Err: err}
	}
	return query(ctx, c.timeout, server, name, typ)
}

func query(ctx context.Context, timeout time.Duration, server, name, typ string) ([]string, error) {
	t, ok := mdns.StringToType[strings.ToUpper(typ)]
	if !ok {
		return nil, &Error{Rcode: -1, Err: fmt.Errorf("dns: unknown record type %q", typ)}
	}
	m := new(mdns.Msg)
	m.SetQuestion(mdns.Fqdn(name), t)
	cl := &mdns.Client{Net: "tcp", Timeout: timeout}
	r, _, err := cl.ExchangeContext(ctx, m, server)
	if err != nil {
		return nil, &Error{Rcode: -1, Err: fmt.Errorf("dns lookup at %s: %w", server, err)}
	}
	if r.Rcode != mdns.RcodeSuccess && r.Rcode != mdns.RcodeNameError {
		return nil, &Error{Rcode: r.Rcode, Err: fmt.Errorf("dns lookup of %s: %s", name, mdns.RcodeToString[r.Rcode])}
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
func rrData(rr mdns.RR) string {
	switch x := rr.(type) {
	case *mdns.A:
		return x.A.String()
	case *mdns.AAAA:
		return x.AAAA.String()
	case *mdns.PTR:
		return x.Ptr
	case *mdns.CNAME:
		return x.Target
	}
	h := rr.Header().String()
	return strings.TrimSpace(strings.TrimPrefix(rr.String(), h))
}
