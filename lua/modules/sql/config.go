package sql

import (
	"github.com/usher-vm/usher/lua/modules/internal/section"
)

// Config names the database: an SQLite file (created if missing) or a
// PostgreSQL DSN, one of the two.
type Config struct {
	Path string // SQLite file
	DSN  string // postgres://…
}

// ParseConfig reads the [policy.modules.sql] table:
//
//	path = "/var/lib/usher/site.db"   # or
//	dsn = "postgres://usher@db.example.org/usher?sslmode=verify-full"
func ParseConfig(m map[string]any) (Config, error) {
	r := section.New("policy.modules.sql", m)
	r.Known("path", "dsn")
	c := Config{Path: r.String("path"), DSN: r.String("dsn")}
	switch {
	case c.Path == "" && c.DSN == "":
		r.Failf("path", "required (or dsn): the database scripts use")
	case c.Path != "" && c.DSN != "":
		r.Failf("dsn", "set path (SQLite) or dsn (PostgreSQL), not both")
	}
	return c, r.Err()
}
