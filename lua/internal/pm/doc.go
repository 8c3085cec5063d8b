// Package pm is a copy of github.com/yuin/gopher-lua/pm (MIT licence,
// Copyright (c) 2015 Yusuke Inuzuka) with one change: matching is metered.
// Every few thousand VM steps the caller's Check function is consulted so
// that a pathological pattern ("(.-)(.-)(.-)b" on a long subject) is cut off
// by the handler budget instead of running for hours, and the recursion
// limit is lowered from 1e6 to 20000 so the Go stack stays small.
package pm
