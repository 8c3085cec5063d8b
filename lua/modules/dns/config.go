package dns

import (
	"github.com/usher-vm/usher/lua/modules/internal/section"
)

// Config lists the DNS servers and TSIG keys scripts may use.
type Config struct {
	Servers []string           // allowed "host:port" for updates and lookups
	Keys    map[string]TSIGKey // by key name, e.g. "usher-key."
}

// TSIGKey is one TSIG secret.
type TSIGKey struct {
	Algorithm string // hmac-sha256 (default), hmac-sha512, hmac-sha1…
	Secret    string // base64
}

// ParseConfig reads the [policy.modules.dns] table:
//
//	servers = ["ns1.example.org:53"]
//	keys."usher-key." = {algorithm = "hmac-sha256", secret_file = "/etc/usher/tsig.key"}
func ParseConfig(m map[string]any) (Config, error) {
	r := section.New("policy.modules.dns", m)
	r.Known("servers", "keys")
	c := Config{Servers: r.Strings("servers")}
	if len(c.Servers) == 0 {
		r.Failf("servers", "required: the servers scripts may reach")
	}
	if ks := r.Tables("keys"); ks != nil {
		c.Keys = map[string]TSIGKey{}
		for name, k := range ks {
			k.Known("algorithm", "secret", "secret_file")
			c.Keys[name] = TSIGKey{Algorithm: k.String("algorithm"), Secret: k.Secret("secret")}
		}
	}
	return c, r.Err()
}
