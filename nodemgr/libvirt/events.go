package libvirt

import (
	"errors"
	"os"

	"github.com/usher-vm/usher/api"

	lv "github.com/digitalocean/go-libvirt"

	"github.com/usher-vm/usher/nodemgr"
)

// item is one input of the event processor: a libvirt lifecycle event, a
// domain listing taken after a (re)connection, or an event synthesised by
// an operation (e.g. destroying a hibernated VM, which libvirt never saw).
type item struct {
	ev       lv.DomainEventLifecycleMsg
	snapshot []domInfo
	snap     bool
	first    bool
	synth    *nodemgr.GuestEvent
}

// known is what the processor last reported for a domain.
type known struct {
	state      api.VMState
	persistent bool
}

// process turns items into nodemgr events. It never calls libvirt; it only
// reads and writes the driver's marker files in StateDir.
func (d *Driver) process() {
	defer d.wg.Done()
	seen := make(map[string]known)
	put := func(ev nodemgr.GuestEvent, persistent bool) {
		if ev.Gone {
			delete(seen, ev.Name)
		} else {
			seen[ev.Name] = known{state: ev.State, persistent: persistent}
		}
		d.emit(ev)
	}
	for {
		var it item
		select {
		case it = <-d.raw:
		case <-d.supDone:
			return // Close: nothing more is delivered
		}
		switch {
		case it.synth != nil:
			put(*it.synth, seen[it.synth.Name].persistent)
		case it.snap:
			d.resetSkips()
			now := make(map[string]domInfo, len(it.snapshot))
			for _, di := range it.snapshot {
				now[di.Name] = di
			}
			if it.first {
				for n, di := range now {
					seen[n] = known{state: di.State, persistent: di.persistent}
				}
				continue
			}
			for n := range seen {
				if _, ok := now[n]; !ok {
					put(nodemgr.GuestEvent{Name: n, Gone: true, Reason: "vanished while libvirtd was unreachable"}, false)
				}
			}
			for n, di := range now {
				k, ok := seen[n]
				if !ok || k.state != di.State {
					put(nodemgr.GuestEvent{Name: n, State: di.State, Reason: di.Reason}, di.persistent)
				} else {
					seen[n] = known{state: di.State, persistent: di.persistent}
				}
			}
		default:
			ev, persistent, ok := d.mapEvent(it.ev, seen[it.ev.Dom.Name])
			if ok {
				put(ev, persistent)
			}
		}
	}
}

// mapEvent maps one libvirt lifecycle event; ok is false for events that
// change nothing Usher reports.
func (d *Driver) mapEvent(m lv.DomainEventLifecycleMsg, k known) (ev nodemgr.GuestEvent, persistent, ok bool) {
	name := m.Dom.Name
	ev.Name = name
	persistent = k.persistent
	switch lv.DomainEventType(m.Event) {
	case lv.DomainEventDefined:
		persistent = true
		if k.state != "" {
			return ev, persistent, false
		}
		ev.State, ev.Reason = api.StateShutoff, "defined"
	case lv.DomainEventUndefined:
		if k.state == api.StateRunning || k.state == api.StatePaused {
			return ev, false, false // a running domain became transient
		}
		ev.Gone, ev.Reason = true, "undefined"
	case lv.DomainEventStarted:
		ev.State = api.StateRunning
		ev.Reason = pick(m.Detail, "booted", "migrated", "restored", "from snapshot", "woken up", "recreated")
	case lv.DomainEventResumed:
		ev.State = api.StateRunning
		ev.Reason = pick(m.Detail, "unpaused", "migrated", "from snapshot", "post-copy", "post-copy failed")
	case lv.DomainEventSuspended:
		switch lv.DomainEventSuspendedDetailType(m.Detail) {
		case lv.DomainEventSuspendedMigrated, lv.DomainEventSuspendedPostcopy:
			return ev, persistent, false // the pause that ends a live migration
		}
		ev.State = api.StatePaused
		ev.Reason = pick(m.Detail, "paused", "migrating", "I/O error", "watchdog", "restored", "from snapshot", "API error", "post-copy", "post-copy failed")
	case lv.DomainEventPmsuspended:
		ev.State, ev.Reason = api.StatePaused, "guest suspended"
	case lv.DomainEventCrashed:
		ev.State, ev.Reason = api.StateCrashed, "crashed"
	case lv.DomainEventStopped:
		if d.takeSkip(name) {
			return ev, persistent, false // cycle: destroyed to be created again
		}
		detail := lv.DomainEventStoppedDetailType(m.Detail)
		reason := pick(m.Detail, "shutdown", "destroyed", "crashed", "migrated", "saved", "failed", "from snapshot")
		ev.Reason = reason
		// A marker written by an operation (shutdown) wins.
		if st := d.readOff(name); st != "" {
			ev.State = st
			return ev, persistent, true
		}
		switch {
		case detail == lv.DomainEventStoppedSaved && fileExists(d.path(name, extSave)):
			ev.State, ev.Reason = api.StateHibernated, "hibernated"
		case detail == lv.DomainEventStoppedMigrated:
			ev.Gone, ev.Reason = true, "migrated away"
		case persistent:
			ev.State = api.StateShutoff
			if detail == lv.DomainEventStoppedCrashed {
				ev.State = api.StateCrashed
			}
		case d.managed(name) && (detail == lv.DomainEventStoppedShutdown || detail == lv.DomainEventStoppedCrashed):
			st := api.StateShutoff
			if detail == lv.DomainEventStoppedCrashed {
				st = api.StateCrashed
			}
			if err := d.writeOff(name, st); err != nil {
				d.log.Warn("writing marker", "domain", name, "err", err)
			}
			ev.State = st
		default:
			ev.Gone = true
		}
	default: // Shutdown (guest asked; Stopped follows) and anything newer
		return ev, persistent, false
	}
	if !ev.Gone && ev.State == k.state {
		return ev, persistent, false
	}
	return ev, persistent, true
}

func pick(i int32, names ...string) string {
	if i >= 0 && int(i) < len(names) {
		return names[i]
	}
	return "unknown"
}

func (d *Driver) addSkip(name string) {
	d.skipMu.Lock()
	d.skip[name]++
	d.skipMu.Unlock()
}

func (d *Driver) unSkip(name string) {
	d.skipMu.Lock()
	if d.skip[name] > 0 {
		d.skip[name]--
	}
	if d.skip[name] == 0 {
		delete(d.skip, name)
	}
	d.skipMu.Unlock()
}

func (d *Driver) takeSkip(name string) bool {
	d.skipMu.Lock()
	defer d.skipMu.Unlock()
	if d.skip[name] == 0 {
		return false
	}
	d.skip[name]--
	if d.skip[name] == 0 {
		delete(d.skip, name)
	}
	return true
}

func (d *Driver) resetSkips() {
	d.skipMu.Lock()
	clear(d.skip)
	d.skipMu.Unlock()
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil || !errors.Is(err, os.ErrNotExist)
}
