package controller

import (
	"sync"
	"time"
)

// LoginLimits bound failed logins. Each user name and each remote address
// may fail Free times; every further failure doubles the time it must wait
// before the next attempt, from Base up to Max. An attempt during the wait
// is refused at once (with the time left), without running the
// authentication chain. A success clears the user's count; an address's
// count is forgotten after Forget without failures.
type LoginLimits struct {
	Free    int
	Base    time.Duration
	Max     time.Duration
	Forget  time.Duration
	MaxKeys int // users and addresses tracked at once
}

func (l LoginLimits) withDefaults() LoginLimits {
	if l.Free <= 0 {
		l.Free = 5
	}
	if l.Base <= 0 {
		l.Base = time.Second
	}
	if l.Max <= 0 {
		l.Max = 5 * time.Minute
	}
	if l.Forget <= 0 {
		l.Forget = 15 * time.Minute
	}
	if l.MaxKeys <= 0 {
		l.MaxKeys = 100_000
	}
	return l
}

type failures struct {
	n     int
	last  time.Time
	until time.Time
}

type loginLimiter struct {
	l   LoginLimits
	now func() time.Time

	mu sync.Mutex
	m  map[string]*failures
}

func newLoginLimiter(l LoginLimits) *loginLimiter {
	return &loginLimiter{l: l.withDefaults(), now: time.Now, m: map[string]*failures{}}
}

func userKey(u string) string { return "u\x00" + u }
func addrKey(a string) string { return "a\x00" + a }

// wait is how long a login of user from addr must wait (0: it may try).
func (g *loginLimiter) wait(user, addr string) time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.now()
	var w time.Duration
	for _, k := range []string{userKey(user), addrKey(addr)} {
		if f := g.m[k]; f != nil && f.until.After(now) {
			w = max(w, f.until.Sub(now))
		}
	}
	return w
}

// failed counts a failed login.
func (g *loginLimiter) failed(user, addr string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.now()
	for _, k := range []string{userKey(user), addrKey(addr)} {
		f := g.m[k]
		if f == nil {
			if len(g.m) >= g.l.MaxKeys {
				g.sweepLocked(now)
			}
			f = &failures{}
			g.m[k] = f
		}
		if now.Sub(f.last) > g.l.Forget {
			f.n = 0
		}
		f.n++
		f.last = now
		if over := f.n - g.l.Free; over > 0 {
			d := g.l.Max
			if over < 32 {
				d = min(g.l.Base<<(over-1), g.l.Max)
			}
			f.until = now.Add(d)
		}
	}
}

// succeeded clears the user's failures.
func (g *loginLimiter) succeeded(user, _ string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.m, userKey(user))
}

// sweepLocked forgets old entries; if the table is still full, the ones
// waiting least.
func (g *loginLimiter) sweepLocked(now time.Time) {
	for k, f := range g.m {
		if now.Sub(f.last) > g.l.Forget && !f.until.After(now) {
			delete(g.m, k)
		}
	}
	for k, f := range g.m {
		if len(g.m) < g.l.MaxKeys*9/10 {
			return
		}
		if !f.until.After(now) {
			delete(g.m, k)
		}
	}
	for k := range g.m {
		if len(g.m) < g.l.MaxKeys*9/10 {
			return
		}
		delete(g.m, k)
	}
}
