// Package nodemgr is the local node manager (LNM): it dials the controller
// with its node certificate, serves the LNM link of package api (Table 2:
// api.Node), keeps the cached VM objects the controller sends it, reports
// state changes (from hypervisor events and periodic scans) and
// 1/5/15-minute usage averages. LNM.Run owns every goroutine it starts.
//
// Hypervisors sit behind the small Driver interface (with Capabilities
// for what drivers differ in); sim is the embedded default, libvirt drives
// real QEMU/KVM hosts, and nodemgr/drivers is the one list of them.
// nodemgr may import api and transport.
package nodemgr
