// Package nodemgr is the local node manager (LNM): it dials the controller
// with its node certificate, serves the LNM remote API of Table 2, keeps the
// cached VM objects the controller sends it, reports state changes (from
// hypervisor events and periodic scans) and 1/5/15-minute usage averages.
//
// Hypervisors sit behind the small Driver interface; sim (subpackage) is
// the embedded default, libvirt drives real QEMU/KVM hosts. nodemgr may
// import core and transport.
package nodemgr
