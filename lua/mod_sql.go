package lua

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // PostgreSQL when sql_dsn is set
	glua "github.com/yuin/gopher-lua"
	_ "modernc.org/sqlite" // pure-Go SQLite, the default
)

// The sql module. Lua API:
//
//	sql.exec("insert into t(a, b) values (?, ?)", {a, b}) → rows_affected, last_id | nil, err
//	sql.query("select a, b from t where a = ?", {a})     → {{a = …, b = …}, …} | nil, err
//	sql.tx(function(tx) tx.exec(…); local rows = tx.query(…) end) → true, … | nil, err
//	sql.driver → "sqlite" | "pgx"
//
// Queries are one statement with ? placeholders (rewritten to $1… for
// PostgreSQL); values travel as parameters, never inside the SQL text.
// Inside sql.tx, sql.exec/sql.query use the transaction as well. NULL
// columns are absent from a row table.

type sqlDB struct {
	db     *sql.DB
	driver string
}

func openSQL(path, dsn string) (*sqlDB, error) {
	if dsn != "" {
		db, err := sql.Open("pgx", dsn)
		if err != nil {
			return nil, fmt.Errorf("sql: %v", err)
		}
		db.SetMaxOpenConns(8)
		return &sqlDB{db: db, driver: "pgx"}, nil
	}
	// One connection: SQLite serialises writers anyway, and a single
	// connection makes every statement see the previous one's writes.
	db, err := sql.Open("sqlite", sqliteDSN(path))
	if err != nil {
		return nil, fmt.Errorf("sql: %v", err)
	}
	db.SetMaxOpenConns(1)
	db.SetConnMaxLifetime(0)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("sql: opening %s: %v", path, err)
	}
	return &sqlDB{db: db, driver: "sqlite"}, nil
}

func sqliteDSN(path string) string {
	if strings.HasPrefix(path, "file:") {
		return path
	}
	return "file:" + path + "?_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)&_pragma=foreign_keys(1)"
}

func (d *sqlDB) close() error { return d.db.Close() }

// sqlRunner is *sql.DB or *sql.Tx.
type sqlRunner interface {
	ExecContext(ctx context.Context, q string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, q string, args ...any) (*sql.Rows, error)
}

// checkSQL enforces one statement (a trailing ; is allowed) and rewrites ?
// placeholders for PostgreSQL. Quoted strings and identifiers are skipped.
func checkSQL(q, driver string) (string, int, error) {
	var b strings.Builder
	n := 0
	var quote byte
	end := false
	for i := 0; i < len(q); i++ {
		c := q[i]
		if quote != 0 {
			b.WriteByte(c)
			if c == quote {
				quote = 0
			}
			continue
		}
		if end && !isSpace(c) {
			return "", 0, errors.New("sql: one statement per call (use sql.tx for several)")
		}
		switch {
		case c == '\'' || c == '"' || c == '`':
			quote = c
			b.WriteByte(c)
		case c == '-' && i+1 < len(q) && q[i+1] == '-':
			return "", 0, errors.New("sql: comments are not allowed in queries")
		case c == '/' && i+1 < len(q) && q[i+1] == '*':
			return "", 0, errors.New("sql: comments are not allowed in queries")
		case c == ';':
			end = true
		case c == '?':
			n++
			if driver == "pgx" {
				b.WriteString("$" + strconv.Itoa(n))
			} else {
				b.WriteByte('?')
			}
		case (c == '$' || c == ':' || c == '@') && driver == "sqlite" && i+1 < len(q) && isIdent(q[i+1]):
			return "", 0, errors.New("sql: use ? placeholders")
		default:
			b.WriteByte(c)
		}
	}
	if quote != 0 {
		return "", 0, errors.New("sql: unterminated quote")
	}
	return b.String(), n, nil
}

func isSpace(c byte) bool { return c == ' ' || c == '\n' || c == '\t' || c == '\r' }
func isIdent(c byte) bool {
	return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
}

// sqlArgs converts the parameter list.
func sqlArgs(L *glua.LState, t *glua.LTable) ([]any, error) {
	if t == nil {
		return nil, nil
	}
	n := t.MaxN()
	out := make([]any, n)
	for i := 1; i <= n; i++ {
		switch v := t.RawGetInt(i).(type) {
		case glua.LString:
			out[i-1] = string(v)
		case glua.LNumber:
			f := float64(v)
			if f == math.Trunc(f) && math.Abs(f) < 1<<53 {
				out[i-1] = int64(f)
			} else {
				out[i-1] = f
			}
		case glua.LBool:
			out[i-1] = bool(v)
		case *glua.LNilType:
			out[i-1] = nil
		default:
			return nil, fmt.Errorf("sql: parameter %d is a %s (strings, numbers, booleans or nil only)", i, v.Type())
		}
	}
	return out, nil
}

func sqlValue(v any) glua.LValue {
	switch x := v.(type) {
	case nil:
		return glua.LNil
	case int64:
		return glua.LNumber(x)
	case int32:
		return glua.LNumber(x)
	case float64:
		return glua.LNumber(x)
	case float32:
		return glua.LNumber(x)
	case bool:
		return glua.LBool(x)
	case []byte:
		return glua.LString(string(x))
	case string:
		return glua.LString(x)
	case time.Time:
		return glua.LString(x.UTC().Format(time.RFC3339Nano))
	}
	return glua.LString(fmt.Sprint(v))
}

func (ls *lstate) sqlExec(L *glua.LState, d *sqlDB, r sqlRunner) int {
	q, nph, err := checkSQL(L.CheckString(1), d.driver)
	if err != nil {
		L.ArgError(1, err.Error())
	}
	args, err := sqlArgs(L, L.OptTable(2, nil))
	if err != nil {
		L.ArgError(2, err.Error())
	}
	if nph < len(args) {
		L.ArgError(2, fmt.Sprintf("sql: %d placeholders but %d parameters", nph, len(args)))
	}
	for len(args) < nph {
		args = append(args, nil) // trailing nils of a Lua list are NULL
	}
	var res sql.Result
	err = ls.netCall(func(ctx context.Context) error {
		var err error
		res, err = r.ExecContext(ctx, q, args...)
		return err
	})
	if err != nil {
		return pushErr(L, fmt.Errorf("sql: %w", err))
	}
	n, _ := res.RowsAffected()
	id, _ := res.LastInsertId()
	L.Push(glua.LNumber(n))
	L.Push(glua.LNumber(id))
	return 2
}

// maxSQLRows bounds one query's result.
const maxSQLRows = 100000

func (ls *lstate) sqlQuery(L *glua.LState, d *sqlDB, r sqlRunner) int {
	q, nph, err := checkSQL(L.CheckString(1), d.driver)
	if err != nil {
		L.ArgError(1, err.Error())
	}
	args, err := sqlArgs(L, L.OptTable(2, nil))
	if err != nil {
		L.ArgError(2, err.Error())
	}
	if nph < len(args) {
		L.ArgError(2, fmt.Sprintf("sql: %d placeholders but %d parameters", nph, len(args)))
	}
	for len(args) < nph {
		args = append(args, nil) // trailing nils of a Lua list are NULL
	}
	var rows [][]any
	var cols []string
	var size int64
	err = ls.netCall(func(ctx context.Context) error {
		rs, err := r.QueryContext(ctx, q, args...)
		if err != nil {
			return err
		}
		defer rs.Close()
		if cols, err = rs.Columns(); err != nil {
			return err
		}
		for rs.Next() {
			vals := make([]any, len(cols))
			ptrs := make([]any, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err := rs.Scan(ptrs...); err != nil {
				return err
			}
			for _, v := range vals {
				switch x := v.(type) {
				case []byte:
					size += int64(len(x)) + 40
				case string:
					size += int64(len(x)) + 40
				default:
					size += 40
				}
			}
			rows = append(rows, vals)
			if len(rows) > maxSQLRows {
				return fmt.Errorf("more than %d rows", maxSQLRows)
			}
		}
		return rs.Err()
	})
	if err != nil {
		return pushErr(L, fmt.Errorf("sql: %w", err))
	}
	ls.call.charge(L, size)
	out := L.CreateTable(len(rows), 0)
	for i, vals := range rows {
		row := L.CreateTable(0, len(cols))
		for j, c := range cols {
			if v := sqlValue(vals[j]); v != glua.LNil {
				row.RawSetString(c, v)
			}
		}
		out.RawSetInt(i+1, row)
	}
	L.Push(out)
	return 1
}

func (ls *lstate) sqlModule(d *sqlDB) *glua.LTable {
	L := ls.L
	var cur *sql.Tx // the open transaction of this state's current sql.tx
	runner := func() sqlRunner {
		if cur != nil {
			return cur
		}
		return d.db
	}
	t := modTable(L, map[string]glua.LGFunction{
		"exec":  func(L *glua.LState) int { return ls.sqlExec(L, d, runner()) },
		"query": func(L *glua.LState) int { return ls.sqlQuery(L, d, runner()) },
		"tx": func(L *glua.LState) int {
			fn := L.CheckFunction(1)
			if cur != nil {
				L.RaiseError("sql.tx: already inside a transaction")
			}
			var tx *sql.Tx
			err := ls.netCall(func(ctx context.Context) error {
				var err error
				// The transaction outlives this call's timeout: bound it by
				// the handler's context only; statements have their own.
				base := ls.v.h.ctx
				if ls.call != nil && ls.call.outer != nil {
					base = ls.call.outer
				}
				tx, err = d.db.BeginTx(base, nil)
				return err
			})
			if err != nil {
				return pushErr(L, fmt.Errorf("sql: %w", err))
			}
			cur = tx
			txt := L.NewTable()
			txt.RawSetString("exec", L.NewFunction(func(L *glua.LState) int { return ls.sqlExec(L, d, tx) }))
			txt.RawSetString("query", L.NewFunction(func(L *glua.LState) int { return ls.sqlQuery(L, d, tx) }))
			top := L.GetTop()
			L.Push(fn)
			L.Push(txt)
			perr := L.PCall(1, glua.MultRet, nil)
			cur = nil
			if perr != nil {
				tx.Rollback()
				if ls.call != nil && ls.call.isCut() {
					L.RaiseError("%s", ls.call.err.Error())
				}
				L.SetTop(top)
				return pushErr(L, errors.New(luaErrMessage(perr)))
			}
			nret := L.GetTop() - top
			if err := ls.netCall(func(context.Context) error { return tx.Commit() }); err != nil {
				L.SetTop(top)
				return pushErr(L, fmt.Errorf("sql: commit: %w", err))
			}
			L.Insert(glua.LTrue, top+1)
			return nret + 1
		},
	})
	t.RawSetString("driver", glua.LString(d.driver))
	return t
}
