package core

import (
	"context"
	"slices"
	"strings"

	"github.com/usher-vm/usher/api"
)

func (c *Controller) visible(id api.Identity, v *api.VM) bool {
	return !c.cfg.OwnerOnly || id.Admin || v.Owner == id.User
}

// authorizeOnly runs the authorize chain for a request that carries no
// decision worth executing (list, list_lnms).
func (c *Controller) authorizeOnly(ctx context.Context, req *Request) error {
	return c.hooks.Authorize(ctx, req, NewDecision(req))
}

// List implements list(vm list, status).
func (c *Controller) List(ctx context.Context, id api.Identity, a api.ListArgs) (*api.ListReply, error) {
	return serve(c, "list", a, len(a.Names), func() (*api.ListReply, error) { return c.list(ctx, id, a) })
}

func (c *Controller) list(ctx context.Context, id api.Identity, a api.ListArgs) (rep *api.ListReply, err error) {
	req := &Request{Kind: KindList, User: id, All: a.All, Cluster: a.Cluster}
	if err := c.authorizeOnly(ctx, req); err != nil {
		return nil, err
	}
	all := a.All && (id.Admin || !c.cfg.OwnerOnly)
	if a.All && !all {
		return nil, api.Errorf(api.ErrForbidden, "listing everyone's VMs needs an admin")
	}
	keep := func(v *api.VM) bool {
		if !all && v.Owner != id.User {
			return false
		}
		return a.Cluster == "" || v.Cluster == a.Cluster
	}
	// Every change after this point has an event numbered above Seq: a
	// client that subscribed before listing applies only those on top.
	rep = &api.ListReply{Seq: c.seq.Load()}
	// source picks the index to read and whether its entries need keep.
	// The caller holds the read lock.
	source := func() (map[string]*api.VM, func(*api.VM) bool) {
		switch {
		case len(a.Names) > 0:
			m := make(map[string]*api.VM, len(a.Names))
			for _, n := range a.Names {
				if v := c.st.vms[n]; v != nil && keep(v) {
					m[n] = v
				}
			}
			return m, nil
		case all:
			return c.st.vms, keep
		case a.Cluster != "":
			if cl := c.st.clusters[clusterKey{id.User, a.Cluster}]; cl != nil {
				return cl.vms, nil
			}
			return nil, nil
		default:
			return c.st.owners[id.User], nil
		}
	}
	// lists adds the lost, missing, unmanaged and conflict lists. The
	// caller holds the read lock.
	lists := func() {
		if !id.Admin && c.cfg.OwnerOnly {
			rep.Lost = cloneVMs(c.st.lost, a.Status, keep)
			rep.Missing = cloneVMs(c.st.missing, a.Status, keep)
			return
		}
		rep.Lost = cloneVMs(c.st.lost, a.Status, nil)
		rep.Missing = cloneVMs(c.st.missing, a.Status, nil)
		var um, cf []*api.VM
		for _, l := range c.st.lnms {
			um = append(um, cloneVMs(l.unmanaged, a.Status, nil)...)
			cf = append(cf, cloneVMs(l.conflicts, false, nil)...)
		}
		if len(um) > 0 {
			rep.Unmanaged = um
		}
		if len(cf) > 0 {
			rep.Conflicts = cf
		}
	}
	if a.Limit > 0 {
		return c.listPage(rep, a, keep, source, lists), nil
	}
	c.st.read(func() {
		src, filter := source()
		rep.VMs = cloneVMs(src, a.Status, filter)
		if a.Lists {
			lists()
		}
	})
	for _, l := range [][]*api.VM{rep.VMs, rep.Lost, rep.Missing, rep.Unmanaged, rep.Conflicts} {
		api.SortVMs(l)
	}
	return rep, nil
}

// listPage answers a paged list: the names after a.After are gathered
// under the read lock, sorted and cut outside it, and only the page's VMs
// are copied (a quarter of a million VMs' names sort in tens of
// milliseconds, which writers should not wait for).
func (c *Controller) listPage(rep *api.ListReply, a api.ListArgs, keep func(*api.VM) bool, source func() (map[string]*api.VM, func(*api.VM) bool), lists func()) *api.ListReply {
	var names []string
	c.st.read(func() {
		src, filter := source()
		names = make([]string, 0, len(src))
		for n, v := range src {
			if n > a.After && (filter == nil || filter(v)) {
				names = append(names, n)
			}
		}
	})
	slices.Sort(names)
	if len(names) > a.Limit {
		names, rep.More = names[:a.Limit], true
	}
	page := make(map[string]*api.VM, len(names))
	c.st.read(func() {
		for _, n := range names {
			if v := c.st.vms[n]; v != nil && keep(v) { // gone since: its event follows Seq
				page[n] = v
			}
		}
		rep.VMs = cloneVMs(page, a.Status, nil)
		if a.Lists && a.After == "" {
			lists()
		}
	})
	slices.SortFunc(rep.VMs, func(x, y *api.VM) int { return strings.Compare(x.Name, y.Name) })
	for _, l := range [][]*api.VM{rep.Lost, rep.Missing, rep.Unmanaged, rep.Conflicts} {
		api.SortVMs(l)
	}
	return rep
}

// ListLNMs implements list_lnms(lnm list, status).
func (c *Controller) ListLNMs(ctx context.Context, id api.Identity, a api.ListLNMsArgs) (*api.ListLNMsReply, error) {
	return serve(c, "list_lnms", a, 0, func() (*api.ListLNMsReply, error) { return c.listLNMs(ctx, id, a) })
}

func (c *Controller) listLNMs(ctx context.Context, id api.Identity, a api.ListLNMsArgs) (rep *api.ListLNMsReply, err error) {
	req := &Request{Kind: KindListLNMs, User: id, LNMs: a.Names}
	if err := c.authorizeOnly(ctx, req); err != nil {
		return nil, err
	}
	all := c.st.LNMs()
	want := map[string]bool{}
	for _, n := range a.Names {
		want[n] = true
	}
	rep = &api.ListLNMsReply{LNMs: make([]*api.LNM, 0, len(all))}
	for _, l := range all {
		if len(want) > 0 && !want[l.Info.Name] {
			continue
		}
		if !a.Status {
			l.Status.Usage = api.Usage{}
		}
		rep.LNMs = append(rep.LNMs, l)
	}
	return rep, nil
}

// Clusters lists the caller's virtual clusters (admins: everyone's with all).
func (c *Controller) Clusters(ctx context.Context, id api.Identity, a api.ClustersArgs) (api.ClustersReply, error) {
	return serve(c, "clusters", a, 0, func() (api.ClustersReply, error) {
		if a.All && (id.Admin || !c.cfg.OwnerOnly) {
			return api.ClustersReply{Clusters: c.st.Clusters("")}, nil
		}
		return api.ClustersReply{Clusters: c.st.Clusters(id.User)}, nil
	})
}
