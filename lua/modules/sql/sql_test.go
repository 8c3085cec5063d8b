package sql

import (
	stdsql "database/sql"
	"path/filepath"
	"testing"

	"github.com/usher-vm/usher/lua"
	"github.com/usher-vm/usher/lua/modules/internal/modtest"
)

func TestSQLParameterized(t *testing.T) {
	path := filepath.Join(t.TempDir(), "site.db")
	db, driver, err := OpenDB(Config{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	_, err = modtest.Run(t, []lua.Module{New(db, driver)}, `
usher.every("1h", function()
  assert(sql.exec("create table users (name text primary key, note text)"))
  local evil = "x'); drop table users; --"
  assert(sql.exec("insert into users (name, note) values (?, ?)", {evil, "it's"}))
  local rows = assert(sql.query("select name, note from users where name = ?", {evil}))
  assert(#rows == 1 and rows[1].name == evil and rows[1].note == "it's")
  -- several statements, comments and named parameters are refused
  assert(not pcall(sql.exec, "delete from users; drop table users"))
  assert(not pcall(sql.query, "select * from users -- x"))
  assert(not pcall(sql.query, "select * from users where name = $1", {"a"}))
  assert(not pcall(sql.query, "select * from users where name = ?", {"a", "b"}))
  assert(#sql.query("select * from users where name = ?", {}) == 0, "missing trailing parameter is NULL")
  assert(not pcall(sql.query, "select * from users where name = ?", {{}}))
  -- a unique violation is an error value, not a raise
  local ok, err = sql.exec("insert into users (name) values (?)", {evil})
  assert(ok == nil and err:find("UNIQUE"), tostring(err))
  -- tx: an error rolls back; success commits and returns the results
  local r, e = sql.tx(function(tx)
    tx.exec("insert into users (name) values (?)", {"bob"})
    error("boom")
  end)
  assert(r == nil and e:find("boom"))
  assert(#sql.query("select name from users where name = ?", {"bob"}) == 0, "rolled back")
  local ok2, n = sql.tx(function(tx)
    sql.exec("insert into users (name) values (?)", {"carol"}) -- uses the tx too
    return #tx.query("select name from users")
  end)
  assert(ok2 == true and n == 2, tostring(n))
  local nulls = sql.query("select note from users where name = ?", {"carol"})
  assert(nulls[1].note == nil)
end)`)
	if err != nil {
		t.Fatal(err)
	}
	// the file holds what Lua wrote, with the hostile value stored verbatim
	raw, err := stdsql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	var n int
	if err := raw.QueryRow("select count(*) from users where name like 'x''); drop%'").Scan(&n); err != nil || n != 1 {
		t.Fatalf("count %d err %v", n, err)
	}
}

func TestCheckSQL(t *testing.T) {
	q, n, err := checkSQL("select * from t where a = ? and b = '?' and c = ?;", "pgx")
	if err != nil || n != 2 || q != "select * from t where a = $1 and b = '?' and c = $2" {
		t.Fatalf("%q %d %v", q, n, err)
	}
	for _, bad := range []string{"select 1; select 2", "select '1", "select 1 /* x */"} {
		if _, _, err := checkSQL(bad, "sqlite"); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
