package core

import (
	"fmt"
	"strings"
)

// MaxNameLen bounds user, cluster and VM short names.
const MaxNameLen = 63

// ValidLabel reports whether s can be a DNS label: a user, cluster or short VM
// name. Names become DNS names, so the rule is the DNS one (lower case).
func ValidLabel(s string) error {
	if s == "" {
		return fmt.Errorf("empty name")
	}
	if len(s) > MaxNameLen {
		return fmt.Errorf("name %.20q… longer than %d characters", s, MaxNameLen)
	}
	for i, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
		case r == '-' && i > 0 && i < len(s)-1:
		default:
			return fmt.Errorf("name %q: only lower-case letters, digits and inner '-' are allowed", s)
		}
	}
	return nil
}

// FullName is <short>.<owner>.<domain>.
func FullName(short, owner, domain string) string {
	return short + "." + owner + "." + domain
}

// ParseFullName splits a managed VM name by the adoption rule: it must end
// with "."+domain and have the shape <short>.<owner>.<domain>.
func ParseFullName(name, domain string) (short, owner string, ok bool) {
	suffix := "." + domain
	if !strings.HasSuffix(name, suffix) {
		return "", "", false
	}
	head := strings.TrimSuffix(name, suffix)
	i := strings.LastIndexByte(head, '.')
	if i <= 0 || i == len(head)-1 {
		return "", "", false
	}
	short, owner = head[:i], head[i+1:]
	if ValidLabel(short) != nil || ValidLabel(owner) != nil {
		return "", "", false
	}
	return short, owner, true
}

// ClusterOf derives a cluster name from a short VM name by stripping the
// trailing index: sneetch12 → sneetch. Used when adopting a VM with no cached
// object.
func ClusterOf(short string) string {
	c := strings.TrimRight(short, "0123456789")
	c = strings.TrimRight(c, "-")
	if c == "" {
		return short
	}
	return c
}
