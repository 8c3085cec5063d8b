package ldap

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	goldap "github.com/go-ldap/ldap/v3"
)

// Endpoint is where and as whom a connection works.
type Endpoint struct {
	URL, DN, Password string
}

// Search is one search request (Filter already escaped and checked).
type Search struct {
	Base   string
	Scope  int // goldap.ScopeWholeSubtree, ScopeSingleLevel or ScopeBaseObject
	Filter string
	Attrs  []string
	Limit  int
}

// Entry is one search result.
type Entry struct {
	DN    string
	Attrs map[string][]string
}

// Mods are the changes of one modify request, by attribute.
type Mods struct {
	Add, Replace, Delete map[string][]string
}

// Error carries the LDAP result code (0 for network errors); scripts get
// it as the third return value.
type Error struct {
	Code uint16
	Err  error
}

func (e *Error) Error() string { return e.Err.Error() }

// Backend is what the ldap table calls: the real Client, or a stand-in.
// Errors should be *Error to give scripts a result code.
type Backend interface {
	// Bind checks dn's password on a fresh connection to url.
	Bind(ctx context.Context, url, dn, password string) error
	Search(ctx context.Context, ep Endpoint, s Search) ([]Entry, error)
	Add(ctx context.Context, ep Endpoint, dn string, attrs map[string][]string) error
	Modify(ctx context.Context, ep Endpoint, dn string, m Mods) error
	Delete(ctx context.Context, ep Endpoint, dn string) error
	// NamedBind is the service account name (ldap.conn{bind = name}).
	NamedBind(name string) (Bind, bool)
}

// Client is the real backend: go-ldap with a small pool of bound
// connections per URL and bind DN.
type Client struct {
	cfg     Config
	timeout time.Duration
	tls     *tls.Config
	allowed map[string]*url.URL

	mu   sync.Mutex
	idle map[string][]*goldap.Conn
}

// NewClient checks c and makes a client whose every network step is
// bounded by timeout. It connects to nothing yet.
func NewClient(c Config, timeout time.Duration) (*Client, error) {
	lc := &Client{cfg: c, timeout: timeout, allowed: map[string]*url.URL{}, idle: map[string][]*goldap.Conn{}}
	if lc.cfg.PoolSize <= 0 {
		lc.cfg.PoolSize = 4
	}
	lc.tls = &tls.Config{MinVersion: tls.VersionTLS12}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("ldap ca_file: %v", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ldap ca_file %s: no certificate", c.CAFile)
		}
		lc.tls.RootCAs = pool
	}
	for _, s := range c.Servers {
		u, err := url.Parse(s)
		if err != nil || (u.Scheme != "ldap" && u.Scheme != "ldaps") || u.Host == "" {
			return nil, fmt.Errorf("ldap server %q: want ldap://host[:port] or ldaps://host[:port]", s)
		}
		lc.allowed[normURL(u)] = u
	}
	return lc, nil
}

func normURL(u *url.URL) string {
	host := u.Hostname()
	port := u.Port()
	if port == "" {
		port = "389"
		if u.Scheme == "ldaps" {
			port = "636"
		}
	}
	return u.Scheme + "://" + net.JoinHostPort(strings.ToLower(host), port)
}

func isLoopbackHost(h string) bool {
	if strings.EqualFold(h, "localhost") {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// NamedBind returns a service account of the configuration.
func (c *Client) NamedBind(name string) (Bind, bool) {
	b, ok := c.cfg.Binds[name]
	return b, ok
}

// dial opens a TLS (ldaps or StartTLS) connection to an allowed server.
func (c *Client) dial(ctx context.Context, raw string) (*goldap.Conn, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("ldap: bad url %q", raw)
	}
	allowed, ok := c.allowed[normURL(u)]
	if !ok {
		return nil, fmt.Errorf("ldap: server %s is not in policy.modules.ldap.servers", raw)
	}
	d := &net.Dialer{Timeout: c.timeout}
	if dl, ok := ctx.Deadline(); ok {
		d.Deadline = dl
	}
	tc := c.tls.Clone()
	tc.ServerName = allowed.Hostname()
	addr := strings.TrimPrefix(strings.TrimPrefix(normURL(allowed), "ldaps://"), "ldap://")
	var conn *goldap.Conn
	if allowed.Scheme == "ldaps" {
		conn, err = goldap.DialURL("ldaps://"+addr, goldap.DialWithDialer(d), goldap.DialWithTLSConfig(tc))
	} else {
		conn, err = goldap.DialURL("ldap://"+addr, goldap.DialWithDialer(d))
		if err == nil && !(c.cfg.PlainLoopback && isLoopbackHost(allowed.Hostname())) {
			if err = conn.StartTLS(tc); err != nil {
				conn.Close()
				err = fmt.Errorf("ldap StartTLS with %s: %w", raw, err)
			}
		}
	}
	if err != nil {
		return nil, err
	}
	conn.SetTimeout(c.timeout)
	return conn, nil
}

// do runs f on a pooled connection bound as ep, retrying once on a fresh
// connection when a pooled one turns out to be dead.
func (c *Client) do(ctx context.Context, ep Endpoint, f func(*goldap.Conn) error) error {
	key := ep.URL + "\x00" + ep.DN
	for attempt := 0; attempt < 2; attempt++ {
		conn, pooled := c.take(key)
		if conn == nil {
			var err error
			if conn, err = c.dial(ctx, ep.URL); err != nil {
				return &Error{Err: err}
			}
			if ep.DN != "" {
				if err := conn.Bind(ep.DN, ep.Password); err != nil {
					conn.Close()
					return wrapLDAP(err)
				}
			}
		}
		stop := context.AfterFunc(ctx, func() { conn.Close() })
		err := f(conn)
		cancelled := !stop()
		if cancelled {
			return &Error{Err: fmt.Errorf("ldap: %w", ctx.Err())}
		}
		if err != nil && pooled && isNetErr(err) {
			conn.Close()
			continue // stale pooled connection: once more on a fresh one
		}
		if err != nil && isNetErr(err) {
			conn.Close()
		} else {
			c.put(key, conn)
		}
		return wrapLDAP(err)
	}
	return &Error{Err: errors.New("ldap: connection lost")}
}

func isNetErr(err error) bool {
	var le *goldap.Error
	if errors.As(err, &le) {
		return le.ResultCode == goldap.ErrorNetwork
	}
	return true
}

func wrapLDAP(err error) error {
	if err == nil {
		return nil
	}
	var le *goldap.Error
	if errors.As(err, &le) {
		return &Error{Code: le.ResultCode, Err: err}
	}
	return &Error{Err: err}
}

func (c *Client) take(key string) (*goldap.Conn, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		l := c.idle[key]
		if len(l) == 0 {
			return nil, false
		}
		conn := l[len(l)-1]
		c.idle[key] = l[:len(l)-1]
		if !conn.IsClosing() {
			return conn, true
		}
	}
}

func (c *Client) put(key string, conn *goldap.Conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.idle[key]) >= c.cfg.PoolSize || conn.IsClosing() {
		conn.Close()
		return
	}
	c.idle[key] = append(c.idle[key], conn)
}

// Close closes the pooled connections.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, l := range c.idle {
		for _, conn := range l {
			conn.Close()
		}
		delete(c.idle, k)
	}
	return nil
}

// Bind checks a user's password on a fresh connection that is closed
// afterwards (never pooled: its identity is the user's).
func (c *Client) Bind(ctx context.Context, raw, dn, password string) error {
	if password == "" || dn == "" {
		return &Error{Code: goldap.LDAPResultInvalidCredentials, Err: errors.New("ldap: empty DN or password never binds")}
	}
	conn, err := c.dial(ctx, raw)
	if err != nil {
		return &Error{Err: err}
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	return wrapLDAP(conn.Bind(dn, password))
}

// Search runs a search; a missing base is no entries.
func (c *Client) Search(ctx context.Context, ep Endpoint, s Search) ([]Entry, error) {
	var out []Entry
	err := c.do(ctx, ep, func(conn *goldap.Conn) error {
		tl := int(c.timeout / time.Second)
		res, err := conn.Search(goldap.NewSearchRequest(s.Base, s.Scope, goldap.NeverDerefAliases, s.Limit, tl, false, s.Filter, s.Attrs, nil))
		if err != nil {
			if goldap.IsErrorWithCode(err, goldap.LDAPResultNoSuchObject) {
				return nil
			}
			return err
		}
		for _, e := range res.Entries {
			le := Entry{DN: e.DN, Attrs: map[string][]string{}}
			for _, a := range e.Attributes {
				le.Attrs[a.Name] = a.Values
			}
			out = append(out, le)
		}
		return nil
	})
	return out, err
}

// Add adds an entry.
func (c *Client) Add(ctx context.Context, ep Endpoint, dn string, attrs map[string][]string) error {
	return c.do(ctx, ep, func(conn *goldap.Conn) error {
		r := goldap.NewAddRequest(dn, nil)
		for _, k := range sortedAttrKeys(attrs) {
			r.Attribute(k, attrs[k])
		}
		return conn.Add(r)
	})
}

// Modify changes an entry's attributes.
func (c *Client) Modify(ctx context.Context, ep Endpoint, dn string, m Mods) error {
	return c.do(ctx, ep, func(conn *goldap.Conn) error {
		r := goldap.NewModifyRequest(dn, nil)
		for _, k := range sortedAttrKeys(m.Add) {
			r.Add(k, m.Add[k])
		}
		for _, k := range sortedAttrKeys(m.Replace) {
			r.Replace(k, m.Replace[k])
		}
		for _, k := range sortedAttrKeys(m.Delete) {
			r.Delete(k, m.Delete[k])
		}
		return conn.Modify(r)
	})
}

// Delete removes an entry.
func (c *Client) Delete(ctx context.Context, ep Endpoint, dn string) error {
	return c.do(ctx, ep, func(conn *goldap.Conn) error { return conn.Del(goldap.NewDelRequest(dn, nil)) })
}

func sortedAttrKeys(m map[string][]string) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
