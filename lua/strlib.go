package lua

import (
	"fmt"
	"strings"

	glua "github.com/yuin/gopher-lua"

	"github.com/usher-vm/usher/lua/internal/pm"
)

// Metered replacements of the string functions that can produce large
// results or run for a long time inside Go (where the per-instruction budget
// check cannot interrupt them). Sizes are checked before allocating.

func (ls *lstate) meterCheck() error {
	c := ls.call
	if c == nil {
		return nil
	}
	c.check(false)
	if c.isCut() {
		return c.err
	}
	return nil
}

func (ls *lstate) strRep(L *glua.LState) int {
	s := L.CheckString(1)
	n := L.CheckNumber(2)
	sep := L.OptString(3, "")
	if n <= 0 {
		L.Push(glua.LString(""))
		return 1
	}
	total := float64(len(s)+len(sep)) * float64(n)
	if total > float64(1<<40) {
		total = float64(1 << 40)
	}
	ls.call.charge(L, int64(total))
	cnt := int(n)
	if sep == "" {
		L.Push(glua.LString(strings.Repeat(s, cnt)))
		return 1
	}
	var b strings.Builder
	b.Grow(int(total))
	for i := 0; i < cnt; i++ {
		if i > 0 {
			b.WriteString(sep)
		}
		b.WriteString(s)
	}
	L.Push(glua.LString(b.String()))
	return 1
}

// strFormat implements string.format with Lua 5.1's rule that width and
// precision have at most two digits, so results stay small.
func (ls *lstate) strFormat(L *glua.LState) int {
	f := L.CheckString(1)
	args := make([]any, 0, L.GetTop()-1)
	arg := 2
	var out strings.Builder
	for i := 0; i < len(f); i++ {
		c := f[i]
		if c != '%' {
			out.WriteByte(c)
			continue
		}
		i++
		if i >= len(f) {
			L.RaiseError("invalid format (ends with '%%')")
		}
		if f[i] == '%' {
			out.WriteByte('%')
			continue
		}
		start := i
		for i < len(f) && strings.IndexByte("-+ #0", f[i]) >= 0 {
			i++
		}
		digits := 0
		for i < len(f) && f[i] >= '0' && f[i] <= '9' {
			i++
			digits++
		}
		if digits > 2 {
			L.RaiseError("invalid format (width too long)")
		}
		if i < len(f) && f[i] == '.' {
			i++
			digits = 0
			for i < len(f) && f[i] >= '0' && f[i] <= '9' {
				i++
				digits++
			}
			if digits > 2 {
				L.RaiseError("invalid format (precision too long)")
			}
		}
		if i >= len(f) {
			L.RaiseError("invalid format string")
		}
		spec := "%" + f[start:i]
		verb := f[i]
		if arg > L.GetTop() {
			L.ArgError(arg, "no value")
		}
		v := L.Get(arg)
		arg++
		args = args[:0]
		switch verb {
		case 'd', 'i':
			args = append(args, int64(L.CheckNumber(arg-1)))
			out.WriteString(fmt.Sprintf(spec+"d", args...))
		case 'c':
			out.WriteByte(byte(L.CheckInt(arg - 1)))
		case 'o', 'x', 'X':
			args = append(args, int64(L.CheckNumber(arg-1)))
			out.WriteString(fmt.Sprintf(spec+string(verb), args...))
		case 'u':
			args = append(args, uint64(L.CheckNumber(arg-1)))
			out.WriteString(fmt.Sprintf(spec+"d", args...))
		case 'e', 'E', 'f', 'g', 'G':
			args = append(args, float64(L.CheckNumber(arg-1)))
			out.WriteString(fmt.Sprintf(spec+string(verb), args...))
		case 'q':
			out.WriteString(strconvQuote(L.CheckString(arg - 1)))
		case 's':
			s := L.ToStringMeta(v).String()
			ls.call.charge(L, int64(len(s)))
			out.WriteString(fmt.Sprintf(spec+"s", s))
		default:
			L.RaiseError("invalid option '%%%c' to 'format'", verb)
		}
		if out.Len() > 1<<20 {
			ls.call.charge(L, int64(out.Len()))
		}
	}
	ls.call.charge(L, int64(out.Len()))
	L.Push(glua.LString(out.String()))
	return 1
}

func strconvQuote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '"', '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case '\n':
			b.WriteString("\\n")
		case '\r':
			b.WriteString("\\r")
		case 0:
			b.WriteString("\\000")
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('"')
	return b.String()
}

func strIndex(str string, i int, start bool) int {
	if start && i != 0 {
		i--
	}
	l := len(str)
	if i < 0 {
		i = l + i + 1
	}
	if i < 0 {
		i = 0
	}
	if !start && i > l {
		i = l
	}
	return i
}

func (ls *lstate) find(L *glua.LState, pat, str string, init, limit int) []*pm.MatchData {
	mds, err := pm.Find(pat, []byte(str), init, limit, ls.meterCheck)
	if err != nil {
		L.RaiseError("%s", err.Error())
	}
	return mds
}

func pushCaptures(L *glua.LState, str string, md *pm.MatchData, whole bool) int {
	if md.CaptureLength() == 2 {
		if whole {
			L.Push(glua.LString(str[md.Capture(0):md.Capture(1)]))
			return 1
		}
		return 0
	}
	n := 0
	for i := 2; i < md.CaptureLength(); i += 2 {
		if md.IsPosCapture(i) {
			L.Push(glua.LNumber(md.Capture(i)))
		} else {
			L.Push(glua.LString(str[md.Capture(i):md.Capture(i+1)]))
		}
		n++
	}
	return n
}

func (ls *lstate) strFind(L *glua.LState) int {
	str := L.CheckString(1)
	pattern := L.CheckString(2)
	init := strIndex(str, L.OptInt(3, 1), true)
	if init > len(str) {
		L.Push(glua.LNil)
		return 1
	}
	if len(pattern) == 0 {
		L.Push(glua.LNumber(init + 1))
		L.Push(glua.LNumber(init))
		return 2
	}
	if glua.LVAsBool(L.Get(4)) {
		pos := strings.Index(str[init:], pattern)
		if pos < 0 {
			L.Push(glua.LNil)
			return 1
		}
		L.Push(glua.LNumber(init + pos + 1))
		L.Push(glua.LNumber(init + pos + len(pattern)))
		return 2
	}
	mds := ls.find(L, pattern, str, init, 1)
	if len(mds) == 0 {
		L.Push(glua.LNil)
		return 1
	}
	md := mds[0]
	L.Push(glua.LNumber(md.Capture(0) + 1))
	L.Push(glua.LNumber(md.Capture(1)))
	return 2 + pushCaptures(L, str, md, false)
}

func (ls *lstate) strMatch(L *glua.LState) int {
	str := L.CheckString(1)
	pattern := L.CheckString(2)
	init := strIndex(str, L.OptInt(3, 1), true)
	if init > len(str) {
		L.Push(glua.LNil)
		return 1
	}
	mds := ls.find(L, pattern, str, init, 1)
	if len(mds) == 0 {
		L.Push(glua.LNil)
		return 1
	}
	return pushCaptures(L, str, mds[0], true)
}

func (ls *lstate) strGmatch(L *glua.LState) int {
	str := L.CheckString(1)
	pattern := L.CheckString(2)
	mds := ls.find(L, pattern, str, 0, -1)
	pos := 0
	L.Push(L.NewFunction(func(L *glua.LState) int {
		if pos >= len(mds) {
			return 0
		}
		md := mds[pos]
		pos++
		return pushCaptures(L, str, md, true)
	}))
	return 1
}

func (ls *lstate) strGsub(L *glua.LState) int {
	str := L.CheckString(1)
	pat := L.CheckString(2)
	L.CheckTypes(3, glua.LTString, glua.LTNumber, glua.LTTable, glua.LTFunction)
	repl := L.Get(3)
	limit := L.OptInt(4, -1)
	mds := ls.find(L, pat, str, 0, limit)
	if len(mds) == 0 {
		L.Push(glua.LString(str))
		L.Push(glua.LNumber(0))
		return 2
	}
	var out strings.Builder
	last := 0
	capture := func(md *pm.MatchData, idx int) glua.LValue {
		if md.CaptureLength() == 2 { // no captures: the whole match
			return glua.LString(str[md.Capture(0):md.Capture(1)])
		}
		i := 2 * idx
		if i+1 >= md.CaptureLength() {
			L.RaiseError("invalid capture index")
		}
		if md.IsPosCapture(i) {
			return glua.LNumber(md.Capture(i))
		}
		return glua.LString(str[md.Capture(i):md.Capture(i+1)])
	}
	for _, md := range mds {
		start, end := md.Capture(0), md.Capture(1)
		out.WriteString(str[last:start])
		last = end
		whole := str[start:end]
		var rep glua.LValue
		switch r := repl.(type) {
		case glua.LString, glua.LNumber:
			rs := r.String()
			var b strings.Builder
			for i := 0; i < len(rs); i++ {
				if rs[i] == '%' && i+1 < len(rs) {
					i++
					c := rs[i]
					switch {
					case c == '0':
						b.WriteString(whole)
					case c >= '1' && c <= '9':
						b.WriteString(capture(md, int(c-'0')).String())
					default:
						b.WriteByte(c)
					}
				} else {
					b.WriteByte(rs[i])
				}
			}
			rep = glua.LString(b.String())
		case *glua.LTable:
			rep = L.GetTable(r, capture(md, 1))
		case *glua.LFunction:
			L.Push(r)
			n := 0
			if md.CaptureLength() == 2 {
				L.Push(glua.LString(whole))
				n = 1
			} else {
				for i := 1; 2*i < md.CaptureLength(); i++ {
					L.Push(capture(md, i))
					n++
				}
			}
			L.Call(n, 1)
			rep = L.Get(-1)
			L.Pop(1)
		}
		if rep == glua.LNil || rep == glua.LFalse {
			out.WriteString(whole)
		} else if s, ok := rep.(glua.LString); ok {
			out.WriteString(string(s))
		} else if n, ok := rep.(glua.LNumber); ok {
			out.WriteString(n.String())
		} else {
			L.RaiseError("invalid replacement value (a %s)", rep.Type().String())
		}
		if out.Len() > 1<<16 {
			ls.call.charge(L, int64(out.Len()))
		}
	}
	out.WriteString(str[last:])
	ls.call.charge(L, int64(out.Len()))
	L.Push(glua.LString(out.String()))
	L.Push(glua.LNumber(len(mds)))
	return 2
}

func (ls *lstate) tableConcat(L *glua.LState) int {
	tbl := L.CheckTable(1)
	sep := L.OptString(2, "")
	i := L.OptInt(3, 1)
	j := L.OptInt(4, tbl.Len())
	if i > j {
		L.Push(glua.LString(""))
		return 1
	}
	total := int64(0)
	for k := i; k <= j; k++ {
		v := tbl.RawGetInt(k)
		switch x := v.(type) {
		case glua.LString:
			total += int64(len(x))
		case glua.LNumber:
			total += 24
		default:
			L.RaiseError("invalid value (at index %d) in table for 'concat'", k)
		}
		total += int64(len(sep))
		if total > 1<<16 && k%1024 == 0 {
			ls.call.charge(L, 0)
		}
	}
	ls.call.charge(L, total)
	var b strings.Builder
	b.Grow(int(total))
	for k := i; k <= j; k++ {
		if k > i {
			b.WriteString(sep)
		}
		b.WriteString(tbl.RawGetInt(k).String())
	}
	L.Push(glua.LString(b.String()))
	return 1
}
