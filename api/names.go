package api

import (
	"fmt"
	"slices"
	"strconv"
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

// ClusterIndex parses the trailing index of a short name made from
// cluster (web12 in cluster web: 12).
func ClusterIndex(short, cluster string) (int, bool) {
	if !strings.HasPrefix(short, cluster) {
		return 0, false
	}
	n, err := strconv.Atoi(short[len(cluster):])
	if err != nil || n < 0 {
		return 0, false
	}
	return n, true
}

// SortVMs orders VMs as list replies are: by owner, cluster, then natural
// index (web2 before web10), then name. Owners and clusters are ranked
// once and indexes parsed once, so a list of a million VMs sorts on
// integers.
func SortVMs(vms []*VM) {
	if len(vms) < 2 {
		return
	}
	type key struct {
		owner, cluster int32
		idx            int
		ok             bool
		v              *VM
	}
	owners, clusters := map[string]int32{}, map[string]int32{}
	for _, v := range vms {
		owners[v.Owner] = 0
		clusters[v.Cluster] = 0
	}
	rank := func(m map[string]int32) {
		names := make([]string, 0, len(m))
		for n := range m {
			names = append(names, n)
		}
		slices.Sort(names)
		for i, n := range names {
			m[n] = int32(i)
		}
	}
	rank(owners)
	rank(clusters)
	keys := make([]key, len(vms))
	for i, v := range vms {
		n, ok := ClusterIndex(v.Short, v.Cluster)
		keys[i] = key{owners[v.Owner], clusters[v.Cluster], n, ok, v}
	}
	slices.SortFunc(keys, func(a, b key) int {
		if a.owner != b.owner {
			return int(a.owner - b.owner)
		}
		if a.cluster != b.cluster {
			return int(a.cluster - b.cluster)
		}
		if a.ok && b.ok && a.idx != b.idx {
			if a.idx < b.idx {
				return -1
			}
			return 1
		}
		return strings.Compare(a.v.Name, b.v.Name)
	})
	for i := range keys {
		vms[i] = keys[i].v
	}
}
