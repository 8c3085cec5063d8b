package ldap

import (
	"github.com/usher-vm/usher/lua/modules/internal/section"
)

// Config lists the LDAP servers scripts may reach.
type Config struct {
	// Servers: allowed URLs, e.g. "ldaps://ldap.example.org" or
	// "ldap://ldap.example.org" (then StartTLS is required).
	Servers []string
	// PlainLoopback allows ldap:// without TLS to loopback addresses
	// (127.0.0.0/8, ::1, localhost): test set-ups only.
	PlainLoopback bool
	// CAFile is a PEM bundle to verify servers with ("" = system roots).
	CAFile string
	// Binds are named service accounts: ldap.conn{url=…, bind="admin"}.
	Binds map[string]Bind
	// PoolSize is the number of idle connections kept per URL and bind DN
	// (default 4).
	PoolSize int
}

// Bind is a service account.
type Bind struct {
	DN       string
	Password string
}

// ParseConfig reads the [policy.modules.ldap] table:
//
//	servers = ["ldaps://ldap.example.org"]
//	ca_file = "/etc/ssl/certs/site-ca.pem"
//	plain_loopback = false
//	pool_size = 4
//	binds.admin = {dn = "cn=usher,dc=example,dc=org", password_file = "/etc/usher/ldap.pw"}
func ParseConfig(m map[string]any) (Config, error) {
	r := section.New("policy.modules.ldap", m)
	r.Known("servers", "plain_loopback", "ca_file", "binds", "pool_size")
	c := Config{
		Servers:       r.Strings("servers"),
		PlainLoopback: r.Bool("plain_loopback"),
		CAFile:        r.String("ca_file"),
		PoolSize:      r.Int("pool_size"),
	}
	if len(c.Servers) == 0 {
		r.Failf("servers", "required: the servers scripts may reach")
	}
	if bs := r.Tables("binds"); bs != nil {
		c.Binds = map[string]Bind{}
		for name, b := range bs {
			b.Known("dn", "password", "password_file")
			c.Binds[name] = Bind{DN: b.String("dn"), Password: b.Secret("password")}
		}
	}
	return c, r.Err()
}
