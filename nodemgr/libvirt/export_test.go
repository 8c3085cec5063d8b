package libvirt

import (
	"libvirt.org/go/libvirtxml"

	"github.com/usher-vm/usher/nodemgr"
)

// DomainDef is the domain definition the driver would make for spec
// (tests outside the package).
func (d *Driver) DomainDef(spec nodemgr.Spec) (*libvirtxml.Domain, error) {
	def, _, err := d.specDef(spec)
	return def, err
}
