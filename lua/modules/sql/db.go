package sql

import (
	"context"
	stdsql "database/sql"
	"fmt"
	"strings"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // PostgreSQL when dsn is set
	_ "modernc.org/sqlite"             // pure-Go SQLite, the default
)

// OpenDB opens the database c names and returns it with its driver name
// ("sqlite" or "pgx"), as New takes them.
func OpenDB(c Config) (*stdsql.DB, string, error) {
	if c.DSN != "" {
		db, err := stdsql.Open("pgx", c.DSN)
		if err != nil {
			return nil, "", fmt.Errorf("sql: %v", err)
		}
		db.SetMaxOpenConns(8)
		return db, "pgx", nil
	}
	// One connection: SQLite serialises writers anyway, and a single
	// connection makes every statement see the previous one's writes.
	db, err := stdsql.Open("sqlite", sqliteDSN(c.Path))
	if err != nil {
		return nil, "", fmt.Errorf("sql: %v", err)
	}
	db.SetMaxOpenConns(1)
	db.SetConnMaxLifetime(0)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, "", fmt.Errorf("sql: opening %s: %v", c.Path, err)
	}
	return db, "sqlite", nil
}

func sqliteDSN(path string) string {
	if strings.HasPrefix(path, "file:") {
		return path
	}
	return "file:" + path + "?_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)&_pragma=foreign_keys(1)"
}
