package api

// Guest configuration: the keys of a VM's data that the node's driver
// turns into the guest's disk, network and first-boot configuration.
// Policies set them (ipam_sql the address, images the image, …); the
// controller sets ssh_keys from the owner's registered keys. Every value
// is a string, as all VM data.
const (
	// DataImage names a base image of the site image store (ush images):
	// the VM boots from a copy-on-write overlay of it.
	DataImage = "image"
	// DataIP is the guest's IPv4 address; DataSubnet its subnet in CIDR
	// form (10.77.0.0/24), which gives the prefix length; DataGateway the
	// default gateway; DataNameservers name servers and DataSearch search domains
	// (comma-separated).
	DataIP          = "ip"
	DataSubnet      = "subnet"
	DataGateway     = "gateway"
	DataNameservers = "nameservers"
	DataSearch      = "search"
	// DataVLAN picks the node's bridge (or tag) for the NIC.
	DataVLAN = "vlan"
	// DataMAC is the NIC's MAC address, kept for the VM's life (the
	// same on every node it migrates to).
	DataMAC = "mac"
	// DataNet is "static" (the default when there is an address),
	// "dhcp" (the site's DHCP server answers the MAC) or "none" (no NIC).
	DataNet = "net"
	// DataHostname overrides the guest's host name (default: the VM's
	// short name).
	DataHostname = "hostname"
	// DataSSHKeys are authorized_keys lines, one per line, installed for
	// the guest's login user.
	DataSSHKeys = "ssh_keys"
	// DataUserData is extra cloud-init user-data a policy adds (a
	// #cloud-config document or a script), merged after Usher's own.
	DataUserData = "user_data"
	// DataQoS is the VM's class: QoSGuaranteed (its vCPUs and memory are
	// never overcommitted: placement counts them against the node's host
	// CPUs, and the node gives it a large CPU weight) or QoSBestEffort
	// (the default: it shares what the node offers, overcommitted as the
	// node is configured).
	DataQoS = "qos"
)

// The values of DataQoS.
const (
	QoSGuaranteed = "guaranteed"
	QoSBestEffort = "best-effort"
)

// Guaranteed reports whether a VM's data makes it guaranteed.
func Guaranteed(data StringMap) bool { return data[DataQoS] == QoSGuaranteed }
