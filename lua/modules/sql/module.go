package sql

import (
	"context"
	stdsql "database/sql"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	glua "github.com/yuin/gopher-lua"

	"github.com/usher-vm/usher/lua"
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

// Name is the module's Lua global and configuration section.
const Name = "sql"

// Open parses the [policy.modules.sql] table, opens the database and
// makes the module.
func Open(section map[string]any, _ time.Duration) (lua.Module, error) {
	c, err := ParseConfig(section)
	if err != nil {
		return nil, err
	}
	db, driver, err := OpenDB(c)
	if err != nil {
		return nil, err
	}
	return New(db, driver), nil
}

// New makes the module over db, whose driver is "sqlite" or "pgx" (the
// placeholder syntax depends on it). Closing the module closes db.
func New(db *stdsql.DB, driver string) lua.Module { return &module{db: db, driver: driver} }

type module struct {
	db     *stdsql.DB
	driver string
}

func (m *module) Name() string { return Name }

func (m *module) Close() error { return m.db.Close() }

// state is the module in one Lua state.
type state struct {
	s      *lua.ModuleState
	driver string
}

func (m *module) Table(s *lua.ModuleState) *glua.LTable {
	st := &state{s: s, driver: m.driver}
	L := s.L()
	var cur *stdsql.Tx // the open transaction of this state's current sql.tx
	current := func() runner {
		if cur != nil {
			return cur
		}
		return m.db
	}
	t := lua.FuncTable(L, map[string]glua.LGFunction{
		"exec":  func(L *glua.LState) int { return st.exec(L, current()) },
		"query": func(L *glua.LState) int { return st.query(L, current()) },
		"tx": func(L *glua.LState) int {
			fn := L.CheckFunction(1)
			if cur != nil {
				L.RaiseError("sql.tx: already inside a transaction")
			}
			var tx *stdsql.Tx
			err := s.Net(func(ctx context.Context) error {
				var err error
				// The transaction outlives this call's timeout: bound it by
				// the handler's context only; statements have their own.
				tx, err = m.db.BeginTx(s.Context(), nil)
				return err
			})
			if err != nil {
				return lua.PushErr(L, fmt.Errorf("sql: %w", err))
			}
			cur = tx
			txt := L.NewTable()
			txt.RawSetString("exec", L.NewFunction(func(L *glua.LState) int { return st.exec(L, tx) }))
			txt.RawSetString("query", L.NewFunction(func(L *glua.LState) int { return st.query(L, tx) }))
			top := L.GetTop()
			L.Push(fn)
			L.Push(txt)
			perr := L.PCall(1, glua.MultRet, nil)
			cur = nil
			if perr != nil {
				tx.Rollback()
				if cut := s.Cut(); cut != nil {
					L.RaiseError("%s", cut.Error())
				}
				L.SetTop(top)
				return lua.PushErr(L, errors.New(lua.ErrMessage(perr)))
			}
			nret := L.GetTop() - top
			if err := s.Net(func(context.Context) error { return tx.Commit() }); err != nil {
				L.SetTop(top)
				return lua.PushErr(L, fmt.Errorf("sql: commit: %w", err))
			}
			L.Insert(glua.LTrue, top+1)
			return nret + 1
		},
	})
	t.RawSetString("driver", glua.LString(m.driver))
	return t
}

// runner is *sql.DB or *sql.Tx.
type runner interface {
	ExecContext(ctx context.Context, q string, args ...any) (stdsql.Result, error)
	QueryContext(ctx context.Context, q string, args ...any) (*stdsql.Rows, error)
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

func (st *state) exec(L *glua.LState, r runner) int {
	q, nph, err := checkSQL(L.CheckString(1), st.driver)
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
	var res stdsql.Result
	err = st.s.Net(func(ctx context.Context) error {
		var err error
		res, err = r.ExecContext(ctx, q, args...)
		return err
	})
	if err != nil {
		return lua.PushErr(L, fmt.Errorf("sql: %w", err))
	}
	n, _ := res.RowsAffected()
	id, _ := res.LastInsertId()
	L.Push(glua.LNumber(n))
	L.Push(glua.LNumber(id))
	return 2
}

// maxSQLRows bounds one query's result.
const maxSQLRows = 100000

func (st *state) query(L *glua.LState, r runner) int {
	q, nph, err := checkSQL(L.CheckString(1), st.driver)
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
	err = st.s.Net(func(ctx context.Context) error {
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
		return lua.PushErr(L, fmt.Errorf("sql: %w", err))
	}
	st.s.Charge(L, size)
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
