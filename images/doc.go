// Package images is the site image store: a folder that every node of a
// migration domain sees at the same path (the paper's NFS), holding base
// disk images and one metadata file per image:
//
//	debian-small.qcow2   the base image (qcow2 or raw), never written to
//	debian-small.json    {"format":"qcow2","description":"…","min_mem_mb":256,
//	                      "kernel":"vmlinuz","initrd":"initramfs.gz",
//	                      "cmdline":"console=ttyS0 root=/dev/vda rw"}
//
// An image is listed only when both files exist and the metadata is
// valid; kernel and initrd (optional: direct kernel boot) are paths
// relative to the store. Images are named like DNS labels, so a name from
// a request can never reach outside the store.
//
// The controller lists the store (ush images, policies); the libvirt
// driver resolves a VM's data image=NAME in it and starts the VM from a
// per-VM copy-on-write overlay. What it may touch: it only reads the
// store. It imports api.
package images
