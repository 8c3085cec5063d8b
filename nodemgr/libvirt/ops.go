package libvirt

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/usher-vm/usher/api"

	lv "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/usher-vm/usher/nodemgr"
)

// domInfo is a listed domain plus what the event processor needs.
type domInfo struct {
	nodemgr.GuestInfo
	persistent bool
	active     bool
}

// NodeInfo reports the host's CPUs and memory (NodeGetInfo), its hostname,
// and in Model the CPU model, clock and libvirt host UUID.
func (d *Driver) NodeInfo(ctx context.Context) (api.NodeInfo, error) {
	var ni api.NodeInfo
	err := d.call(ctx, 0, func(l *lv.Libvirt) error {
		model, memKiB, cpus, mhz, _, _, _, _, err := l.NodeGetInfo()
		if err != nil {
			return err
		}
		host, err := l.ConnectGetHostname()
		if err != nil {
			return err
		}
		caps, err := l.ConnectGetCapabilities()
		if err != nil {
			return err
		}
		m := make([]byte, 0, len(model))
		for _, c := range model {
			if c == 0 {
				break
			}
			m = append(m, byte(c))
		}
		// The UUID only decorates Model: unparsable capabilities are
		// logged, not fatal.
		uuid, err := hostUUID(caps)
		if err != nil {
			d.log.Warn("reading host UUID", "err", err)
		}
		ni = api.NodeInfo{CPUs: int(cpus) * d.o.VCPUOvercommit, GuaranteedCPUs: int(cpus), MemMB: int(memKiB / 1024), Hostname: host,
			Model: fmt.Sprintf("%s %dMHz host-uuid=%s", m, mhz, uuid)}
		return nil
	})
	if err != nil {
		return api.NodeInfo{}, fmt.Errorf("libvirt: node info: %w", err)
	}
	ni.Name, ni.Driver, ni.Address = d.o.Node, d.Kind(), d.o.Address
	if d.o.MigrationURI != "" {
		ni.Address = d.o.MigrationURI
	}
	return ni, nil
}

// hostUUID reads the host UUID from libvirt's capabilities XML.
func hostUUID(caps string) (string, error) {
	var c libvirtxml.Caps
	if err := c.Unmarshal(caps); err != nil {
		return "", fmt.Errorf("parsing capabilities XML: %w", err)
	}
	return strings.TrimSpace(c.Host.UUID), nil
}

// List reports every libvirt domain, plus the VMs this driver hibernated
// (save files) or shut down (markers) that libvirt no longer knows.
func (d *Driver) List(ctx context.Context) ([]nodemgr.GuestInfo, error) {
	l, err := d.conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("libvirt: list: %w", err)
	}
	doms, err := d.listOn(ctx, l)
	if err != nil {
		return nil, fmt.Errorf("libvirt: list: %w", err)
	}
	out := make([]nodemgr.GuestInfo, len(doms))
	for i, di := range doms {
		out[i] = di.GuestInfo
	}
	return out, nil
}

func (d *Driver) listOn(ctx context.Context, l *lv.Libvirt) ([]domInfo, error) {
	var recs []lv.DomainStatsRecord
	var pers []lv.Domain
	err := d.callOn(ctx, l, 0, func(l *lv.Libvirt) error {
		var err error
		recs, err = l.ConnectGetAllDomainStats(nil, uint32(lv.DomainStatsState|lv.DomainStatsBalloon|lv.DomainStatsVCPU), 0)
		if err != nil {
			return err
		}
		pers, _, err = l.ConnectListAllDomains(1, lv.ConnectListDomainsPersistent)
		return err
	})
	if err != nil {
		return nil, err
	}
	isPers := make(map[string]bool, len(pers))
	for _, p := range pers {
		isPers[p.Name] = true
	}
	var out []domInfo
	have := make(map[string]bool, len(recs))
	for _, r := range recs {
		p := params(r.Params)
		st := lv.DomainState(p.int("state.state"))
		reason := stateReason(st, p.int("state.reason"))
		vcpus := int(p.int("vcpu.current"))
		if vcpus == 0 {
			vcpus = int(p.int("vcpu.maximum"))
		}
		di := domInfo{GuestInfo: nodemgr.GuestInfo{Name: r.Dom.Name, State: stateOf(st), Reason: reason,
			MemMB: int(p.int("balloon.maximum") / 1024), VCPUs: vcpus},
			persistent: isPers[r.Dom.Name], active: r.Dom.ID > 0 || (st != lv.DomainShutoff && st != lv.DomainCrashed)}
		if !di.active {
			// A persistent, stopped domain we hibernated or shut down.
			if fileExists(d.path(r.Dom.Name, extSave)) {
				di.State, di.Reason = api.StateHibernated, "hibernated"
			}
		}
		have[r.Dom.Name] = true
		out = append(out, di)
	}
	// VMs that exist only as files of ours.
	ents, err := os.ReadDir(d.o.StateDir)
	if err != nil {
		return nil, err
	}
	for _, e := range ents {
		n := e.Name()
		var st api.VMState
		var name, reason string
		switch {
		case strings.HasSuffix(n, extSave):
			name, st, reason = strings.TrimSuffix(n, extSave), api.StateHibernated, "hibernated"
		case strings.HasSuffix(n, extOff):
			name = strings.TrimSuffix(n, extOff)
			st = d.readOff(name)
			reason = string(st)
			if st == api.StateShutoff {
				reason = "shutdown"
			}
		default:
			continue
		}
		if have[name] || name == "" {
			continue
		}
		have[name] = true
		di := domInfo{GuestInfo: nodemgr.GuestInfo{Name: name, State: st, Reason: reason}}
		if b, err := os.ReadFile(d.path(name, extXML)); err == nil {
			if di.MemMB, di.VCPUs, err = domainSize(b); err != nil {
				d.log.Warn("reading size of stopped domain", "domain", name, "file", d.path(name, extXML), "err", err)
			}
		}
		out = append(out, di)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Start creates and boots a transient domain; it returns once libvirt
// reports it running.
func (d *Driver) Start(ctx context.Context, spec nodemgr.Spec) error {
	if err := validName(spec.Name); err != nil {
		return err
	}
	if fileExists(d.path(spec.Name, extSave)) {
		return fmt.Errorf("libvirt: start %s: %w (hibernated; restore or destroy it)", spec.Name, ErrExists)
	}
	x, g, err := d.domainXML(spec)
	if err != nil {
		return err
	}
	err = d.call(ctx, 0, func(l *lv.Libvirt) error {
		if _, err := l.DomainLookupByName(spec.Name); err == nil {
			return fmt.Errorf("%w", ErrExists)
		} else if !isNoDomain(err) {
			return err
		}
		if err := d.checkCapacity(l, spec); err != nil {
			return err
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("libvirt: start %s: %w", spec.Name, err)
	}
	if err := writeAtomic(d.path(spec.Name, extXML), []byte(x)); err != nil {
		return fmt.Errorf("libvirt: start %s: %w", spec.Name, err)
	}
	os.Remove(d.path(spec.Name, extOff))
	os.Remove(d.path(spec.Name, extConsole)) // a fresh boot, a fresh console
	if err := d.makeDisks(ctx, spec.Name, g); err != nil {
		os.Remove(d.path(spec.Name, extXML))
		return fmt.Errorf("libvirt: start %s: %w", spec.Name, err)
	}
	if err := d.create(ctx, spec.Name, x); err != nil {
		os.Remove(d.path(spec.Name, extXML))
		d.removeDisks(spec.Name)
		return err
	}
	return nil
}

func (d *Driver) create(ctx context.Context, name, x string) error {
	err := d.call(ctx, d.o.LongTimeout, func(l *lv.Libvirt) error {
		_, err := l.DomainCreateXML(x, 0)
		return err
	})
	if err != nil {
		return fmt.Errorf("libvirt: start %s: %w", name, err)
	}
	return nil
}

// checkCapacity refuses a domain that needs more vCPUs than the host has
// or more memory than is free.
func (d *Driver) checkCapacity(l *lv.Libvirt, spec nodemgr.Spec) error {
	_, _, cpus, _, _, _, _, _, err := l.NodeGetInfo()
	if err != nil {
		return err
	}
	free, err := l.NodeGetFreeMemory()
	if err != nil {
		return err
	}
	if spec.VCPUs > int(cpus) {
		return fmt.Errorf("%w: %d vCPUs requested, host has %d CPUs", ErrInsufficientCapacity, spec.VCPUs, cpus)
	}
	if uint64(spec.MemMB)<<20 > free {
		return fmt.Errorf("%w: %d MiB requested, %d MiB free", ErrInsufficientCapacity, spec.MemMB, free>>20)
	}
	return nil
}

func (d *Driver) lookup(l *lv.Libvirt, name string) (lv.Domain, error) {
	dom, err := l.DomainLookupByName(name)
	if isNoDomain(err) {
		return dom, fmt.Errorf("%w: %s", ErrNoSuchDomain, name)
	}
	return dom, err
}

// domState returns a domain's state, or "" if libvirt has no such domain.
func (d *Driver) domState(ctx context.Context, name string) (lv.DomainState, bool, error) {
	var st lv.DomainState
	var found bool
	err := d.call(ctx, 0, func(l *lv.Libvirt) error {
		dom, err := l.DomainLookupByName(name)
		if isNoDomain(err) {
			return nil
		} else if err != nil {
			return err
		}
		s, _, err := l.DomainGetState(dom, 0)
		if isNoDomain(err) {
			return nil
		} else if err != nil {
			return err
		}
		st, found = lv.DomainState(s), true
		return nil
	})
	return st, found, err
}

// Op applies a Table 3 operation.
func (d *Driver) Op(ctx context.Context, name string, op api.Op, o nodemgr.OpOptions) error {
	if err := validName(name); err != nil {
		return err
	}
	if _, err := api.ParseOp(string(op)); err != nil {
		return fmt.Errorf("libvirt: %w", err)
	}
	err := d.op(ctx, name, op, o.Force)
	if err != nil {
		return fmt.Errorf("libvirt: %s %s: %w", op, name, err)
	}
	return nil
}

func (d *Driver) op(ctx context.Context, name string, op api.Op, force bool) error {
	st, active, err := d.domState(ctx, name)
	if err != nil {
		return err
	}
	running := active && st != lv.DomainShutoff && st != lv.DomainCrashed
	hibernated := !running && fileExists(d.path(name, extSave))
	off := !running && d.readOff(name) != ""
	if !running && !hibernated && !off && !(active && op == api.OpDestroy) {
		if active {
			return fmt.Errorf("%w: domain is %s", ErrInvalidTransition, stateOf(st))
		}
		return ErrNoSuchDomain
	}
	bad := func() error {
		cur := api.StateRunning
		switch {
		case hibernated:
			cur = api.StateHibernated
		case off:
			cur = d.readOff(name)
		case st == lv.DomainPaused:
			cur = api.StatePaused
		}
		return fmt.Errorf("%w: cannot %s a %s domain", ErrInvalidTransition, op, cur)
	}
	withDom := func(timeout time.Duration, fn func(l *lv.Libvirt, dom lv.Domain) error) error {
		return d.call(ctx, timeout, func(l *lv.Libvirt) error {
			dom, err := d.lookup(l, name)
			if err != nil {
				return err
			}
			return fn(l, dom)
		})
	}
	switch op {
	case api.OpPause:
		if !running {
			return bad()
		}
		return withDom(0, func(l *lv.Libvirt, dom lv.Domain) error { return l.DomainSuspend(dom) })
	case api.OpResume:
		if !running {
			return bad()
		}
		return withDom(0, func(l *lv.Libvirt, dom lv.Domain) error { return l.DomainResume(dom) })
	case api.OpReboot:
		if !running {
			return bad()
		}
		if force {
			return withDom(0, func(l *lv.Libvirt, dom lv.Domain) error { return l.DomainReset(dom, 0) })
		}
		return withDom(0, func(l *lv.Libvirt, dom lv.Domain) error { return l.DomainReboot(dom, lv.DomainRebootDefault) })
	case api.OpShutdown:
		if !running {
			return bad()
		}
		return d.shutdown(ctx, name, force)
	case api.OpHibernate:
		if !running {
			return bad()
		}
		return d.hibernate(ctx, name)
	case api.OpRestore:
		if !hibernated {
			return bad()
		}
		p := d.path(name, extSave)
		err := d.call(ctx, d.o.LongTimeout, func(l *lv.Libvirt) error { return l.DomainRestore(p) })
		if err != nil {
			return err
		}
		os.Remove(p)
		return nil
	case api.OpDestroy:
		if running {
			err := withDom(0, func(l *lv.Libvirt, dom lv.Domain) error { return l.DomainDestroyFlags(dom, lv.DomainDestroyDefault) })
			if err != nil && !errors.Is(err, ErrNoSuchDomain) {
				return err
			}
		}
		for _, ext := range []string{extSave, extOff, extXML} {
			os.Remove(d.path(name, ext))
		}
		d.removeDisks(name)
		if !running {
			// libvirt never saw this VM stop; tell the LNM ourselves.
			d.send(item{synth: &nodemgr.GuestEvent{Name: name, Gone: true, Reason: "destroyed"}})
		}
		return nil
	case api.OpCycle:
		return d.cycle(ctx, name, running)
	}
	return fmt.Errorf("unsupported operation %s", op)
}

// shutdown asks the guest to power off, waits ShutdownTimeout for the
// domain to stop and then, only with force, destroys it. The VM stays
// listed as shutoff (a marker file) until cycled or destroyed.
func (d *Driver) shutdown(ctx context.Context, name string, force bool) error {
	if err := d.adopt(ctx, name); err != nil {
		return err
	}
	err := d.call(ctx, 0, func(l *lv.Libvirt) error {
		dom, err := d.lookup(l, name)
		if err != nil {
			return err
		}
		return l.DomainShutdownFlags(dom, lv.DomainShutdownDefault)
	})
	if err != nil {
		return err
	}
	deadline := time.Now().Add(d.o.ShutdownTimeout)
	for {
		st, active, err := d.domState(ctx, name)
		if err != nil {
			return err
		}
		if !active || st == lv.DomainShutoff {
			if d.managed(name) {
				return d.writeOff(name, api.StateShutoff)
			}
			return nil
		}
		if time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	if !force {
		return fmt.Errorf("guest did not power off within %v (a forced shutdown destroys it)", d.o.ShutdownTimeout)
	}
	// The marker makes the Stopped(destroyed) event read as shutoff.
	if err := d.writeOff(name, api.StateShutoff); err != nil {
		return err
	}
	err = d.call(ctx, 0, func(l *lv.Libvirt) error {
		dom, err := d.lookup(l, name)
		if err != nil {
			return err
		}
		return l.DomainDestroyFlags(dom, lv.DomainDestroyDefault)
	})
	if err != nil && !errors.Is(err, ErrNoSuchDomain) {
		os.Remove(d.path(name, extOff))
		return err
	}
	return nil
}

// adopt keeps libvirt's XML of a running domain this driver did not start
// (a migrated-in or foreign domain) in StateDir, so that once stopped or
// hibernated it stays listed and cycle can recreate it.
func (d *Driver) adopt(ctx context.Context, name string) error {
	if d.managed(name) {
		return nil
	}
	var x string
	err := d.call(ctx, 0, func(l *lv.Libvirt) error {
		dom, err := d.lookup(l, name)
		if err != nil {
			return err
		}
		x, err = l.DomainGetXMLDesc(dom, lv.DomainXMLInactive|lv.DomainXMLSecure)
		return err
	})
	if err != nil {
		return err
	}
	return writeAtomic(d.path(name, extXML), []byte(x))
}

// hibernate saves the domain's memory to StateDir/<name>.save; libvirt then
// forgets the (transient) domain.
func (d *Driver) hibernate(ctx context.Context, name string) error {
	p := d.path(name, extSave)
	if err := d.adopt(ctx, name); err != nil {
		return err
	}
	err := d.call(ctx, d.o.LongTimeout, func(l *lv.Libvirt) error {
		dom, err := d.lookup(l, name)
		if err != nil {
			return err
		}
		return l.DomainSave(dom, p)
	})
	if err != nil {
		// libvirt removes a partial file itself; make sure no stale one
		// makes the running domain look hibernated later.
		if st, active, serr := d.domState(context.WithoutCancel(ctx), name); serr == nil && active && st != lv.DomainShutoff {
			os.Remove(p)
		}
		return err
	}
	return nil
}

// cycle destroys the domain (if it runs) and creates it again from the
// same XML.
func (d *Driver) cycle(ctx context.Context, name string, running bool) error {
	if running {
		// Not started by us (or migrated in): take libvirt's XML.
		if err := d.adopt(ctx, name); err != nil {
			return err
		}
	}
	x, err := os.ReadFile(d.path(name, extXML))
	if running {
		if err != nil {
			return err
		}
		d.addSkip(name)
		err = d.call(ctx, 0, func(l *lv.Libvirt) error {
			dom, err := d.lookup(l, name)
			if err != nil {
				return err
			}
			return l.DomainDestroyFlags(dom, lv.DomainDestroyDefault)
		})
		if err != nil {
			d.unSkip(name)
			return err
		}
	} else if err != nil {
		return fmt.Errorf("no saved XML to recreate it from: %w", err)
	}
	os.Remove(d.path(name, extSave))
	os.Remove(d.path(name, extOff))
	return d.create(ctx, name, string(x))
}

// PrepareIncoming readies this host as a migration's target: nothing
// (libvirt migrates peer to peer), except with DiskCopy, where the VM's
// overlay (of this host's copy of its image) and seed are made here for
// libvirt to copy the overlay's data into.
func (d *Driver) PrepareIncoming(ctx context.Context, spec nodemgr.Spec) error {
	if err := ctx.Err(); err != nil || d.o.DiskMigration != DiskCopy {
		return err
	}
	if err := validName(spec.Name); err != nil {
		return err
	}
	g, err := d.guestConfig(spec)
	if err != nil {
		return err
	}
	if _, active, err := d.domState(ctx, spec.Name); err != nil {
		return err
	} else if active {
		return fmt.Errorf("libvirt: prepare %s: %w here", spec.Name, ErrExists)
	}
	if err := d.makeDisks(ctx, spec.Name, g); err != nil {
		return fmt.Errorf("libvirt: prepare %s: %w", spec.Name, err)
	}
	return nil
}

// AbortIncoming undoes PrepareIncoming: with DiskCopy, the disks made for
// a migration that did not happen go (unless the VM runs here after all).
func (d *Driver) AbortIncoming(ctx context.Context, name string) error {
	if err := ctx.Err(); err != nil || d.o.DiskMigration != DiskCopy {
		return err
	}
	if err := validName(name); err != nil {
		return err
	}
	if _, active, err := d.domState(ctx, name); err != nil || active {
		return err
	}
	d.removeDisks(name)
	return nil
}

// migrationTarget turns a target's advertised address into the libvirt URI
// the source libvirtd connects to and the URI of QEMU's data stream.
func (d *Driver) migrationTarget(address string) (dconn, data string, err error) {
	if address == "" {
		return "", "", errors.New("no target address (the target node advertises none)")
	}
	if !strings.Contains(address, "://") {
		address = "qemu+tcp://" + address + "/system"
	}
	u, err := url.Parse(address)
	if err != nil {
		return "", "", fmt.Errorf("bad target address %q: %w", address, err)
	}
	host := u.Hostname()
	if host == "" {
		host = d.o.MigrationHost
	}
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	return address, "tcp://" + host, nil
}

// Migrate live-migrates a running domain peer to peer to the libvirtd at
// address (the target's MigrationURI). On failure the domain keeps running
// here and the error carries libvirt's message.
func (d *Driver) Migrate(ctx context.Context, name, target, address string) error {
	if err := validName(name); err != nil {
		return err
	}
	dconn, data, err := d.migrationTarget(address)
	if err != nil {
		return fmt.Errorf("libvirt: migrate %s to %s: %w", name, target, err)
	}
	params := []lv.TypedParam{{Field: lv.MigrateParamURI, Value: *lv.NewTypedParamValueString(data)}}
	start := time.Now()
	err = d.call(ctx, d.o.LongTimeout, func(l *lv.Libvirt) error {
		dom, err := d.lookup(l, name)
		if err != nil {
			return err
		}
		// The target names the NIC's tap for itself (TapName).
		x, err := l.DomainGetXMLDesc(dom, lv.DomainXMLMigratable|lv.DomainXMLSecure)
		if err != nil {
			return err
		}
		if dx, changed, err := retarget(x, target, name); err != nil {
			return err
		} else if changed {
			params = append(params, lv.TypedParam{Field: lv.MigrateParamDestXML, Value: *lv.NewTypedParamValueString(dx)})
		}
		flags := lv.MigrateLive | lv.MigratePeer2peer
		switch d.o.DiskMigration {
		case DiskSharedUnsafe:
			flags |= lv.MigrateUnsafe
		case DiskCopy:
			flags |= lv.MigrateNonSharedInc // the overlay's data; the target has the image
		}
		_, err = l.DomainMigratePerform3Params(dom, lv.OptString{dconn}, params, nil, flags)
		return err
	})
	if err != nil {
		return fmt.Errorf("libvirt: migrate %s to %s (%s): %w", name, target, dconn, err)
	}
	d.log.Info("migrated", "domain", name, "target", target, "uri", dconn, "took", time.Since(start))
	// The domain lives there now; its files here go, except the console,
	// which the destination QEMU keeps appending to, and its disks, which
	// it uses (shared storage).
	for _, ext := range []string{extXML, extOff} {
		os.Remove(d.path(name, ext))
	}
	if d.o.DiskMigration == DiskCopy {
		d.removeDisks(name) // copied: the target has its own
	}
	return nil
}

// counters are cumulative readings of one domain.
type counters struct {
	id                    int32
	cpuNs, rx, tx, rd, wr uint64
}

// Stats samples usage: CPU in cores, memory (RSS, or the balloon size) and
// network and disk byte rates, as deltas since the previous call (the first
// call reports memory only).
func (d *Driver) Stats(ctx context.Context) (nodemgr.Stats, error) {
	var recs []lv.DomainStatsRecord
	err := d.call(ctx, 0, func(l *lv.Libvirt) error {
		var err error
		recs, err = l.ConnectGetAllDomainStats(nil,
			uint32(lv.DomainStatsState|lv.DomainStatsCPUTotal|lv.DomainStatsBalloon|lv.DomainStatsInterface|lv.DomainStatsBlock),
			uint32(lv.ConnectGetAllDomainsStatsActive))
		return err
	})
	if err != nil {
		return nodemgr.Stats{}, fmt.Errorf("libvirt: stats: %w", err)
	}
	now := time.Now()
	d.statMu.Lock()
	defer d.statMu.Unlock()
	dt := now.Sub(d.prevAt).Seconds()
	cur := make(map[string]counters, len(recs))
	st := nodemgr.Stats{Guests: make(map[string]nodemgr.Sample, len(recs))}
	for _, r := range recs {
		p := params(r.Params)
		c := counters{id: r.Dom.ID, cpuNs: p.int("cpu.time")}
		for i := uint64(0); i < p.int("net.count"); i++ {
			c.rx += p.int(fmt.Sprintf("net.%d.rx.bytes", i))
			c.tx += p.int(fmt.Sprintf("net.%d.tx.bytes", i))
		}
		for i := uint64(0); i < p.int("block.count"); i++ {
			c.rd += p.int(fmt.Sprintf("block.%d.rd.bytes", i))
			c.wr += p.int(fmt.Sprintf("block.%d.wr.bytes", i))
		}
		cur[r.Dom.Name] = c
		var s nodemgr.Sample
		if rss := p.int("balloon.rss"); rss > 0 {
			s.MemBytes = float64(rss) * 1024
		} else {
			s.MemBytes = float64(p.int("balloon.current")) * 1024
		}
		if prev, ok := d.prev[r.Dom.Name]; ok && prev.id == c.id && dt > 0 {
			rate := func(a, b uint64) float64 {
				if b < a {
					return 0
				}
				return float64(b-a) / dt
			}
			s.CPU = rate(prev.cpuNs, c.cpuNs) / 1e9
			s.NetRx, s.NetTx = rate(prev.rx, c.rx), rate(prev.tx, c.tx)
			s.DiskRead, s.DiskWrite = rate(prev.rd, c.rd), rate(prev.wr, c.wr)
		}
		st.Guests[r.Dom.Name] = s
		st.Node.CPU += s.CPU
		st.Node.MemBytes += s.MemBytes
		st.Node.NetRx += s.NetRx
		st.Node.NetTx += s.NetTx
		st.Node.DiskRead += s.DiskRead
		st.Node.DiskWrite += s.DiskWrite
	}
	d.prev, d.prevAt = cur, now
	return st, nil
}

// typed parameters by name
type params []lv.TypedParam

func (ps params) int(name string) uint64 {
	for _, p := range ps {
		if p.Field != name {
			continue
		}
		switch v := p.Value.I.(type) {
		case int32:
			return uint64(max(v, 0))
		case uint32:
			return uint64(v)
		case int64:
			return uint64(max(v, 0))
		case uint64:
			return v
		}
	}
	return 0
}

func stateReason(st lv.DomainState, r uint64) string {
	i := int32(r)
	switch st {
	case lv.DomainRunning:
		return pick(i, "unknown", "booted", "migrated", "restored", "from snapshot", "unpaused", "migration canceled", "save canceled", "woken up", "crashed", "post-copy")
	case lv.DomainPaused:
		return pick(i, "unknown", "user", "migration", "save", "dump", "I/O error", "watchdog", "from snapshot", "shutting down", "snapshot", "API error", "starting up", "post-copy", "post-copy failed")
	case lv.DomainShutoff:
		return pick(i, "unknown", "shutdown", "destroyed", "crashed", "migrated", "saved", "failed", "from snapshot", "daemon")
	case lv.DomainCrashed:
		return pick(i, "unknown", "panicked")
	}
	return ""
}

// retarget rewrites a domain's migratable XML for node: the taps of its
// NICs get node's names (TapName). It reports whether anything changed.
func retarget(x, node, name string) (string, bool, error) {
	var def libvirtxml.Domain
	if err := def.Unmarshal(x); err != nil {
		return "", false, fmt.Errorf("parsing the domain's XML: %w", err)
	}
	changed := false
	if def.Devices != nil {
		for i := range def.Devices.Interfaces {
			in := &def.Devices.Interfaces[i]
			if in.Target != nil && strings.HasPrefix(in.Target.Dev, "u") && len(in.Target.Dev) == 14 {
				in.Target.Dev = TapName(node, name)
				changed = true
			}
		}
	}
	if !changed {
		return x, false, nil
	}
	out, err := def.Marshal()
	if err != nil {
		return "", false, fmt.Errorf("the domain's XML for %s: %w", node, err)
	}
	return out, true, nil
}
