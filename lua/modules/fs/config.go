package fs

import (
	"github.com/usher-vm/usher/lua/modules/internal/section"
)

// Config lists the directories fs may work below.
type Config struct {
	// Roots: absolute directories; fs may create and remove directories
	// only below them (never a root itself).
	Roots []string
}

// ParseConfig reads the [policy.modules.fs] table:
//
//	roots = ["/srv/usher"]
func ParseConfig(m map[string]any) (Config, error) {
	r := section.New("policy.modules.fs", m)
	r.Known("roots")
	c := Config{Roots: r.Strings("roots")}
	if len(c.Roots) == 0 {
		r.Failf("roots", "required: the directories scripts may work below")
	}
	return c, r.Err()
}
