// Package libvirt is Usher's libvirt VMM driver: an implementation of
// nodemgr.Driver that runs real guests through a libvirtd (QEMU/KVM, or
// QEMU/TCG in tests), talking libvirt's RPC protocol in pure Go
// (github.com/digitalocean/go-libvirt, no cgo).
//
// How it maps Usher onto libvirt:
//   - Usher VMs are transient domains (DomainCreateXML) built from the
//     Spec and the Options' default kernel/initrd/cmdline; the XML is kept
//     in StateDir/<name>.xml so cycle can recreate the domain. Domain XML
//     is built, and libvirt's XML (domains, capabilities) parsed, with
//     libvirt.org/go/libvirtxml (pure Go); nothing is escaped by hand.
//   - hibernate is DomainSave to StateDir/<name>.save (the domain then
//     disappears from libvirt; List reports it as hibernated from the save
//     file), restore is DomainRestore of that file.
//   - shutdown leaves StateDir/<name>.off so List still reports the VM as
//     shutoff (a transient domain vanishes when it stops); cycle or destroy
//     clear it.
//   - migration is peer-to-peer live migration (the source libvirtd
//     connects to the target's libvirt URI, advertised as the node's
//     Address); PrepareIncoming and AbortIncoming are no-ops.
//   - lifecycle events are mapped to nodemgr.GuestEvent; the connection
//     is re-established after libvirtd restarts, events are re-subscribed,
//     and differences found by a fresh listing are emitted as events.
//
// Every go-libvirt call runs with a timeout (go-libvirt takes no context);
// a call that times out drops the connection, and a fresh client is built.
// libvirt is never called from the goroutine that receives its events.
//
//   - guests users can reach (guest.go): a VM's data names an image of the
//     site image store (package images), booted from a per-VM qcow2
//     overlay in DiskDir; its address, VLAN, MAC, name servers, host name,
//     SSH keys and user-data become a NIC on the node's bridge, a
//     cloud-init NoCloud seed (an ISO 9660 written with go-diskfs) and,
//     for kernel-boot images, kernel arguments;
//   - the serial console is a pty logged to StateDir/<name>.console;
//     Console opens it through libvirt (nodemgr.Consoler).
//
// What it may touch: the libvirtd it is configured for (domains it is asked
// to operate on, and the listing of all domains); inside StateDir only
// files named <domain>.xml, .save, .save.tmp, .off and .console; inside
// DiskDir only <domain>.qcow2, <domain>.seed.iso and its own temporary
// .seed-work-* folders; the image store it only reads. Serial consoles are
// written by QEMU to StateDir/<name>.console, so StateDir must be an
// absolute path that libvirtd and QEMU can see (the same path on the host
// and inside a libvirtd mount namespace). It starts two goroutines per
// driver (connection supervisor and event processor), one per outstanding
// libvirt call and one per open console; the only process it starts is
// qemu-img, to create an overlay.
//
// The real-hypervisor tests and their harness (harness.go, build tag
// "libvirt", and testdata/libvirt/harness.sh) start two libvirtds of their
// own, each in its own mount namespace, and stop exactly those.
package libvirt
