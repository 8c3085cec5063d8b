// Package sql is the sql module of Usher's policies: the Lua table
// scripts use for parameterised statements and transactions
// (docs/lua-api.md, "Site modules"), its configuration section
// ([policy.modules.sql]) and the database behind it, an SQLite file (pure
// Go driver) or PostgreSQL (pgx). Values travel as parameters, never
// inside the SQL text.
//
// New takes any open database/sql handle; policy tests give it an
// in-memory SQLite (lua/modules/fakes). The package may import lua (the
// module interface and its helpers), lua/modules/internal/section and the
// two drivers; it touches only the database of its Config.
package sql
