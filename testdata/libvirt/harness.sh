#!/usr/bin/env bash
# Usher libvirt test harness: installs libvirt/QEMU, prepares a tiny guest
# (Debian cloud kernel + busybox/dropbear initramfs) and runs two libvirt
# hosts on this machine, each libvirtd in its own mount namespace with its
# own runtime, state, config and log folders and its own host UUID, so that
# live migration between them works (see /work/shared/testbed.md). Both
# hosts run inside one network namespace owned by the run (the "lab": only
# lo and a bridge br0 at 10.77.0.1/24, no route anywhere else), so guests
# with a NIC on br0 reach each other and the lab's services and nothing
# else (see /work/shared/testbed-network.md).
#
# Usage:
#   harness.sh install                 apt-get install what is missing (root)
#   harness.sh prepare CACHE_DIR       kernel, modules, test ssh key and initramfs
#                                      into CACHE_DIR (idempotent)
#   harness.sh image CACHE_DIR         a small Debian disk image (qcow2) and its
#                                      metadata into CACHE_DIR/images (cached)
#   harness.sh start RUN_DIR           create the lab namespace, start host1 and host2 in it
#   harness.sh start-host RUN_DIR N    (re)start host N only (1 or 2)
#   harness.sh kill-host RUN_DIR N     SIGKILL host N's libvirtd (QEMU guests survive)
#   harness.sh lab-services RUN_DIR DOMAIN
#                                      named (zones DOMAIN and 0.77.10.in-addr.arpa,
#                                      TSIG updates), DHCP (dnsmasq, fixed MAC->IP
#                                      plan) in the lab, and a TCP forwarder from
#                                      127.0.0.1 (root namespace) to named
#   harness.sh lab-dhcp-reload RUN_DIR make dnsmasq re-read RUN_DIR/lab/dhcp-hosts
#   harness.sh lab-exec RUN_DIR CMD... run CMD inside the lab, with the lab's
#                                      resolv.conf on /etc/resolv.conf
#   harness.sh stop RUN_DIR            destroy their guests, stop both daemons and
#                                      the lab services, delete the namespace
#   harness.sh watch RUN_DIR PID [--remove]
#                                      stop RUN_DIR (and remove it) once process PID has exited
#                                      (run detached: cleans up after a test
#                                      binary that panicked or was killed)
#
# Files in RUN_DIR: hostN/{run,lib,etc,log} and cache (bind-mounted in host N's
# namespace on /run/libvirt, /var/lib/libvirt, /etc/libvirt, /var/log/libvirt,
# /var/cache/libvirt), hostN.pid (libvirtd pid), hostN.sock (its socket,
# reachable from the root namespace), hostN.uri (qemu+unix URI for it),
# netns (the lab namespace's name, ushlab-<8 hex of sha256(RUN_DIR)>),
# lab/ (named, dnsmasq, forwarder: configs, pid files, logs; dhcp-hosts is the
# DHCP plan, lines MAC,IP[,NAME]; resolv.conf for lab-exec).
#
# Files in CACHE_DIR: vmlinuz (+ vmlinuz.version), kmod/<version>/ (the
# kernel package's modules), id_test{,.pub} (test ssh key, made once),
# initramfs.gz and guest_host_key.pub (rebuilt when this script, the kernel
# or the test key change), images/ (debian-small.qcow2, debian-small.json,
# vmlinuz, initramfs.gz).
#
# What it touches: apt and the libvirt-qemu user / kvm group (install only),
# CACHE_DIR, RUN_DIR, the processes it started (the libvirtds by pid, the
# QEMUs by the pid files those libvirtds wrote, the lab services by pid, and
# every process left inside the run's own network namespace), that network
# namespace (/run/netns/<name>; /run/netns itself is unmounted and removed
# again only if a harness run created it, recorded in
# /tmp/usher-harness-netns-mount, and no namespace is left in it).
# Nothing in /etc or /var/lib of the machine itself; the bind mounts live and
# die with the namespaces; it only creates the (empty) mount points
# /run/libvirt, /var/lib/libvirt, /var/log/libvirt and /var/cache/libvirt if
# they do not exist.
#
# Guest contract (the initramfs's /init; kernel command line):
#   usher.hostname=H            hostname (default: ip='s HOST, else usher-guest)
#   ip=CLIENT::GW:MASK:HOST:DEV:off   static address (initramfs-tools format;
#                               DEV empty -> eth0), or ip=dhcp; no ip= -> no
#                               network setup and no waiting for a NIC
#   (virtio_net/virtio_blk/isofs are loaded only when the guest has a virtio
#   NIC or disk)
#   usher.dns=IP[,IP] usher.search=D[,D]   -> /etc/resolv.conf
#   root=/dev/vdX               boot that ext4 disk (switch_root to /sbin/init)
#   NoCloud seed: an ISO9660 labelled "cidata" on any block device: meta-data
#   "local-hostname: H" (wins over usher.hostname), user-data's
#   "ssh_authorized_keys:" list -> root's authorized_keys (only those keys);
#   no seed -> an initramfs guest accepts the test key CACHE_DIR/id_test
#   (a disk guest gets no key).
#   Console: "USHER-SEED hostname=H keys=N" or "USHER-SEED none", then
#   "USHER-GUEST-UP H" (after dropbear listens on port 22) and "tick N" each
#   second; an initramfs guest also runs a root shell on ttyS0 (consoles). Disk guests get /etc/hostname, /etc/systemd/network/10-usher.network
#   (and /etc/resolv.conf with usher.dns=) written before switch_root; the
#   image prints the same markers once multi-user is reached.
set -euo pipefail
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

SELF=$(readlink -f "$0")
PACKAGES=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 qemu-utils busybox-static
	iproute2 util-linux dnsmasq-base dropbear-bin bind9 bind9-utils bind9-dnsutils socat openssh-client
	iputils-ping mmdebstrap e2fsprogs genisoimage)
# command -> Debian package, for error messages
declare -A TOOL_PKG=(
	[libvirtd]=libvirt-daemon [virsh]=libvirt-clients [qemu-system-x86_64]=qemu-system-x86
	[qemu-img]=qemu-utils [busybox]=busybox-static [unshare]=util-linux [dpkg-deb]=dpkg
	[apt-get]=apt [gzip]=gzip [ip]=iproute2 [ss]=iproute2 [flock]=util-linux [setsid]=util-linux
	[mountpoint]=util-linux [dnsmasq]=dnsmasq-base [dropbear]=dropbear-bin [dropbearkey]=dropbear-bin
	[named]=bind9 [named-checkconf]=bind9-utils [nsupdate]=bind9-dnsutils [dig]=bind9-dnsutils
	[socat]=socat [ssh]=openssh-client [ssh-keygen]=openssh-client [ping]=iputils-ping
	[mmdebstrap]=mmdebstrap [mkfs.ext4]=e2fsprogs [genisoimage]=genisoimage [ldd]=libc-bin
	[sha256sum]=coreutils [base64]=coreutils
)
UUIDS=("" "aaaaaaaa-2222-3333-4444-555555555555" "11111111-2222-3333-4444-555555555555")
WAIT_SECS=${HARNESS_WAIT_SECS:-30}

# The lab network (inside the run's network namespace).
LAB_BRIDGE=br0
LAB_GW=10.77.0.1
LAB_PREFIX=24
LAB_NETMASK=255.255.255.0
LAB_REVZONE=0.77.10.in-addr.arpa
TSIG_NAME=usher-key.

# Virtio and ISO9660 modules for the guest, in dependency order (the
# kernel package has no modules.dep; /init loads them with insmod).
GUEST_MODULES=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci failover net_failover virtio_net virtio_blk cdrom isofs)

die() { echo "harness: $*" >&2; exit 1; }
log() { echo "harness: $*" >&2; }

missing_packages() {
	local miss=()
	for p in "${PACKAGES[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || miss+=("$p")
	done
	echo "${miss[@]:-}"
}

need_tools() {
	local t miss=()
	for t in "$@"; do
		command -v "$t" >/dev/null 2>&1 || miss+=("$t (Debian package ${TOOL_PKG[$t]:-?})")
	done
	[ ${#miss[@]} -eq 0 ] || die "missing tools: ${miss[*]}; run: $0 install"
}

need_root() { [ "$(id -u)" = 0 ] || die "must run as root ($*)"; }

# libvirtd resolves its compiled-in QEMU user and group before reading
# qemu.conf, so they must exist even though the hosts run QEMU as root.
ensure_accounts() {
	getent group kvm >/dev/null || groupadd -r kvm
	getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
	getent passwd libvirt-qemu >/dev/null || useradd -r -g libvirt-qemu -G kvm -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
}

accounts_ok() { getent group kvm >/dev/null && getent passwd libvirt-qemu >/dev/null; }

cmd_install() {
	local miss
	miss=$(missing_packages)
	if [ -z "$miss" ] && accounts_ok; then
		log "packages present: ${PACKAGES[*]}"
		return 0
	fi
	if [ "$(id -u)" != 0 ]; then
		die "not root: cannot install missing Debian packages: ${miss:-none} (apt-get install -y --no-install-recommends $miss) or create the libvirt-qemu user and kvm group"
	fi
	ensure_accounts
	[ -n "$miss" ] || return 0
	log "installing: $miss"
	export DEBIAN_FRONTEND=noninteractive
	# shellcheck disable=SC2086
	if ! apt-get install -y -qq --no-install-recommends $miss >/dev/null; then
		apt-get update -qq
		# shellcheck disable=SC2086
		apt-get install -y -qq --no-install-recommends $miss >/dev/null
	fi
	miss=$(missing_packages)
	[ -z "$miss" ] || die "still missing after install: $miss"
}

# ---------------------------------------------------------------- prepare

# ensure_kernel CACHE: vmlinuz and the same package's modules in kmod/.
ensure_kernel() {
	local cache=$1 ver="" kver
	ver=$(cat "$cache/vmlinuz.version" 2>/dev/null || true)
	kver=${ver#vmlinuz-}
	if [ -s "$cache/vmlinuz" ] && [ -n "$kver" ] && [ -d "$cache/kmod/$kver" ]; then
		return 0
	fi
	local newest pkg tmp ok=""
	newest=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
		sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-cloud-amd64\)$/\1/p' | sort -V | tail -1)
	tmp=$(mktemp -d "$cache/kernel.XXXXXX")
	# The version of the vmlinuz we have first (its modules), else the newest.
	for pkg in ${kver:+linux-image-$kver} $newest; do
		log "downloading $pkg"
		if (cd "$tmp" && apt-get download -qq "$pkg" >/dev/null 2>&1); then
			ok=$pkg
			break
		fi
	done
	[ -n "$ok" ] || { rm -rf "$tmp"; die "cannot download a linux-image-*-cloud-amd64 package (tried: ${kver:+linux-image-$kver} ${newest:-none known to apt; run apt-get update})"; }
	dpkg-deb -x "$tmp"/*.deb "$tmp/x"
	local k
	k=$(ls "$tmp"/x/boot/vmlinuz-* | head -1)
	kver=${k##*/vmlinuz-}
	[ -d "$tmp/x/lib/modules/$kver" ] || { rm -rf "$tmp"; die "$ok has no lib/modules/$kver"; }
	cp "$tmp"/x/boot/config-* "$tmp/x/lib/modules/$kver/config" 2>/dev/null || true
	mkdir -p "$cache/kmod"
	rm -rf "${cache:?}/kmod/$kver"
	mv "$tmp/x/lib/modules/$kver" "$cache/kmod/$kver"
	cp "$k" "$cache/vmlinuz.tmp" && mv "$cache/vmlinuz.tmp" "$cache/vmlinuz"
	basename "$k" >"$cache/vmlinuz.version.tmp" && mv "$cache/vmlinuz.version.tmp" "$cache/vmlinuz.version"
	# modules of other kernel versions are no longer needed
	local d
	for d in "$cache"/kmod/*; do
		[ "${d##*/}" = "$kver" ] || rm -rf "$d"
	done
	rm -rf "$tmp"
}

# build_initramfs CACHE KVER: CACHE/initramfs.gz and CACHE/guest_host_key.pub.
build_initramfs() {
	local cache=$1 kver=$2 root m f lib dep
	root=$(mktemp -d "$cache/initramfs.XXXXXX")
	mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,etc/dropbear,etc/usher,root/.ssh,lib/modules,var/log,seed,newroot}
	cp "$(command -v busybox)" "$root/bin/busybox"
	# dropbear is dynamic in Debian: copy it with the libraries ldd lists
	# (incl. the dynamic loader).
	cp /usr/sbin/dropbear "$root/usr/sbin/dropbear"
	for lib in $(ldd /usr/sbin/dropbear | grep -o '/[^ ]*'); do
		mkdir -p "$root$(dirname "$lib")"
		cp -L "$lib" "$root$lib"
	done
	local loaded=" "
	for m in "${GUEST_MODULES[@]}"; do
		f=$(find "$cache/kmod/$kver" -name "$m.ko" | head -1)
		[ -n "$f" ] || die "kernel $kver: module $m.ko not found in $cache/kmod/$kver (compressed modules are not supported)"
		for dep in $(grep -a -o 'depends=[a-z0-9_,-]*' "$f" | head -1 | sed 's/^depends=//; s/,/ /g'); do
			[[ "$loaded" == *" $dep "* ]] || die "kernel $kver: module $m needs $dep, which is not loaded before it (GUEST_MODULES)"
		done
		cp "$f" "$root/lib/modules/"
		loaded+="$m "
	done
	# Host key at build time (all guests of one build share it); its public
	# half for clients' known_hosts.
	dropbearkey -t ed25519 -f "$root/etc/dropbear/dropbear_ed25519_host_key" >/dev/null 2>&1
	dropbearkey -y -f "$root/etc/dropbear/dropbear_ed25519_host_key" | grep '^ssh-' >"$cache/guest_host_key.pub.tmp"
	cp "$cache/id_test.pub" "$root/etc/usher/test_key.pub"
	chmod 700 "$root/root" "$root/root/.ssh"
	echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
	echo 'root:*:1::::::' >"$root/etc/shadow" # no password: key logins only
	echo 'root:x:0:' >"$root/etc/group"
	printf '/bin/sh\n' >"$root/etc/shells"
	cat >"$root/etc/udhcpc.script" <<'EOF'
#!/bin/sh
# busybox udhcpc hook: $interface $ip $subnet $router $domain $dns
case "$1" in
deconfig) ip addr flush dev "$interface"; ip link set "$interface" up ;;
bound|renew)
	ifconfig "$interface" "$ip" netmask "${subnet:-255.255.255.0}" up
	if [ -n "$router" ]; then
		while route del default 2>/dev/null; do :; done
		for r in $router; do route add default gw "$r" dev "$interface"; break; done
	fi
	if [ ! -e /etc/usher/dns-fixed ]; then
		: >/etc/resolv.conf
		[ -n "$domain" ] && echo "search $domain" >>/etc/resolv.conf
		for d in $dns; do echo "nameserver $d" >>/etc/resolv.conf; done
	fi
	echo "USHER-DHCP $1 $interface $ip/$subnet router=$router"
	;;
esac
exit 0
EOF
	chmod 755 "$root/etc/udhcpc.script"
	# /init: modules, NoCloud seed, network, dropbear (or switch_root to a disk).
	{
		echo '#!/bin/busybox sh'
		echo "MODULES=\"${GUEST_MODULES[*]}\""
		cat <<'EOF'
# Usher test guest (testdata/libvirt/harness.sh); see the guest contract there.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /dev/pts
mount -t devpts devpts /dev/pts
mount -t tmpfs tmp /tmp
up() { cut -d" " -f1 /proc/uptime; }
echo "USHER-T init $(up)"
h=; ipconf=; rootdev=; dns=; search=
set -f
for a in $(cat /proc/cmdline); do
	case "$a" in
	usher.hostname=*) h="${a#usher.hostname=}" ;;
	usher.dns=*) dns="${a#usher.dns=}" ;;
	usher.search=*) search="${a#usher.search=}" ;;
	ip=*) ipconf="${a#ip=}" ;;
	root=/dev/*) rootdev="${a#root=}" ;;
	esac
done
set +f
# The virtio modules only when there is a virtio NIC or disk (PCI vendor
# 0x1af4, legacy or modern device ids): guests without any boot as fast as
# before.
for d in /sys/bus/pci/devices/*; do
	[ "$(cat "$d/vendor" 2>/dev/null)" = 0x1af4 ] || continue
	case "$(cat "$d/device")" in
	0x1000 | 0x1001 | 0x1041 | 0x1042)
		for m in $MODULES; do
			insmod "/lib/modules/$m.ko" || echo "USHER-WARN insmod $m failed"
		done
		echo "USHER-T modules $(up)"
		break
		;;
	esac
done

# ip=: dhcp, or client:server:gw:netmask:hostname:device:autoconf
net=; client=; gw=; mask=; dev=eth0; prefix=
case "$ipconf" in
"" | off | none) ;;
dhcp | on | any | dhcp4 | both) net=dhcp ;;
*)
	IFS=: read -r client _server gw mask iphost ipdev _auto <<E2
$ipconf
E2
	[ -n "$ipdev" ] && dev=$ipdev
	[ -z "$h" ] && [ -n "$iphost" ] && h=$iphost
	case "$mask" in
	*.*) eval "$(ipcalc -p "$client" "$mask")"; prefix=$PREFIX ;;
	"") prefix=24 ;;
	*) prefix=$mask ;;
	esac
	[ -n "$client" ] && net=static
	;;
esac
[ -n "$h" ] || h=usher-guest

# A disk: mount it first, so that the seed's keys go to its root.
sshdir=/root/.ssh
if [ -n "$rootdev" ]; then
	i=0
	while [ ! -b "$rootdev" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
	if ! mount -t ext4 -o rw "$rootdev" /newroot; then
		echo "USHER-ERROR cannot mount $rootdev"
		exec sh
	fi
	sshdir=/newroot/root/.ssh
fi

# NoCloud seed: an ISO9660 volume labelled cidata on any block device.
seed=
for b in /sys/class/block/*; do
	d=/dev/${b##*/}
	[ -b "$d" ] || continue
	[ "$(dd if="$d" bs=1 skip=32769 count=5 2>/dev/null)" = CD001 ] || continue
	label=$(dd if="$d" bs=1 skip=32808 count=32 2>/dev/null | tr -d ' ' | tr A-Z a-z)
	[ "$label" = cidata ] && { seed=$d; break; }
done
mkdir -p "$sshdir"
chmod 700 "${sshdir%/.ssh}" "$sshdir"
if [ -n "$seed" ] && mount -t iso9660 -o ro "$seed" /seed; then
	sh_=$(sed -n 's/^local-hostname:[[:space:]]*//p' /seed/meta-data 2>/dev/null | head -1 | tr -d "\"'\r")
	[ -n "$sh_" ] && h=$sh_
	# ssh_authorized_keys: followed by "  - KEY" lines (quotes optional)
	awk -v q="'" '
	/^ssh_authorized_keys:/ { k = 1; next }
	k && /^[ \t]*-[ \t]/ {
		sub(/^[ \t]*-[ \t]*/, ""); sub(/[ \t\r]+$/, "")
		c = substr($0, 1, 1)
		if ((c == "\"" || c == q) && substr($0, length($0), 1) == c) $0 = substr($0, 2, length($0) - 2)
		if ($0 != "") print
		next
	}
	k { k = 0 }' /seed/user-data >"$sshdir/authorized_keys" 2>/dev/null
	echo "USHER-T seed $seed"
	echo "USHER-SEED hostname=$h keys=$(grep -c . "$sshdir/authorized_keys")"
	umount /seed
else
	if [ -z "$rootdev" ]; then
		cp /etc/usher/test_key.pub "$sshdir/authorized_keys"
	fi
	echo "USHER-SEED none"
fi
[ -e "$sshdir/authorized_keys" ] && chmod 600 "$sshdir/authorized_keys"

resolv() { # resolv FILE: usher.dns / usher.search
	rm -f "$1"
	[ -n "$search" ] && echo "search $(echo "$search" | tr , ' ')" >>"$1"
	for d in $(echo "$dns" | tr , ' '); do echo "nameserver $d" >>"$1"; done
	echo "options timeout:1 attempts:2" >>"$1"
}

if [ -n "$rootdev" ]; then
	echo "$h" >/newroot/etc/hostname
	n=/newroot/etc/systemd/network/10-usher.network
	mkdir -p "${n%/*}"
	rm -f "$n"
	if [ -n "$net" ]; then
		{
			printf '# written by the Usher test initramfs\n[Match]\nName=eth* en*\n[Network]\n'
			if [ "$net" = dhcp ]; then
				echo "DHCP=ipv4"
			else
				echo "Address=$client/$prefix"
				[ -n "$gw" ] && echo "Gateway=$gw"
			fi
			for d in $(echo "$dns" | tr , ' '); do echo "DNS=$d"; done
			[ -n "$search" ] && echo "Domains=$(echo "$search" | tr , ' ')"
		} >"$n"
	fi
	[ -n "$dns$search" ] && resolv /newroot/etc/resolv.conf
	echo "USHER-T switch_root $(up) net=${net:-none}"
	umount /dev/pts /tmp
	mount --move /dev /newroot/dev
	umount /proc /sys
	exec switch_root /newroot /sbin/init
fi

hostname "$h"
ip link set lo up
if [ -n "$net" ]; then
	i=0
	while [ ! -e "/sys/class/net/$dev" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
	if [ "$net" = static ]; then
		ip link set "$dev" up
		ip addr add "$client/$prefix" dev "$dev"
		[ -n "$gw" ] && ip route add default via "$gw" dev "$dev"
		echo "USHER-STATIC $dev $client/$prefix gw=$gw"
	else
		[ -n "$dns$search" ] && touch /etc/usher/dns-fixed
		# foreground until a lease is bound (or -t tries), then in the background
		udhcpc -i "$dev" -s /etc/udhcpc.script -t 30 -T 1 -b -x hostname:"$h" -F "$h"
	fi
fi
[ -n "$dns$search" ] && resolv /etc/resolv.conf
# -s: no password logins; -r: the build's host key; daemonizes
/usr/sbin/dropbear -s -r /etc/dropbear/dropbear_ed25519_host_key -p 22 -P /run/dropbear.pid
echo "USHER-T up $(up)"
# A root shell on the serial console: what a user types in ush console
# runs here (the test guest has no getty).
setsid sh -c 'exec sh -i </dev/ttyS0 >/dev/ttyS0 2>&1' &
echo "USHER-GUEST-UP $h"
i=0
while true; do
	echo "tick $i"
	i=$((i+1))
	sleep 1
done
EOF
	} >"$root/init"
	chmod 755 "$root/init"
	(cd "$root" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -6 >"$cache/initramfs.gz.tmp")
	mv "$cache/guest_host_key.pub.tmp" "$cache/guest_host_key.pub"
	mv "$cache/initramfs.gz.tmp" "$cache/initramfs.gz"
	rm -rf "$root"
}

cmd_prepare() {
	local cache=${1:?usage: prepare CACHE_DIR}
	need_tools apt-get dpkg-deb busybox gzip flock sha256sum ssh-keygen dropbear dropbearkey ldd
	mkdir -p "$cache"
	cache=$(cd "$cache" && pwd)
	(
		# One preparer at a time (test binaries run in parallel).
		flock 8
		ensure_kernel "$cache"
		local kver
		kver=$(cat "$cache/vmlinuz.version")
		kver=${kver#vmlinuz-}
		if [ ! -s "$cache/id_test" ] || [ ! -s "$cache/id_test.pub" ]; then
			rm -f "$cache/id_test.tmp" "$cache/id_test.tmp.pub"
			ssh-keygen -q -t ed25519 -N '' -C usher-test -f "$cache/id_test.tmp"
			mv "$cache/id_test.tmp.pub" "$cache/id_test.pub"
			mv "$cache/id_test.tmp" "$cache/id_test"
		fi
		# The initramfs is rebuilt when this script (its /init is above), the
		# kernel or the test key change.
		local stamp
		stamp=$({ cat "$SELF"; echo "$kver"; cat "$cache/id_test.pub"; } | sha256sum | cut -c1-16)
		if [ ! -s "$cache/initramfs.gz" ] || [ ! -s "$cache/guest_host_key.pub" ] ||
			[ "$(cat "$cache/initramfs.stamp" 2>/dev/null)" != "$stamp" ]; then
			build_initramfs "$cache" "$kver"
			echo "$stamp" >"$cache/initramfs.stamp"
		fi
	) 8>>"$cache/.lock"
	echo "KERNEL=$cache/vmlinuz"
	echo "INITRD=$cache/initramfs.gz"
	echo "SSH_KEY=$cache/id_test"
	echo "GUEST_HOST_KEY=$cache/guest_host_key.pub"
}

# ---------------------------------------------------------------- image

IMAGE_NAME=debian-small
IMAGE_JSON='{"format":"qcow2","description":"Debian 12 minbase, systemd, OpenSSH (test image)","kernel":"vmlinuz","initrd":"initramfs.gz","cmdline":"console=ttyS0 root=/dev/vda rw","min_mem_mb":256}'

# image_rootfs DIR: the image's root file system (the recipe: a change here
# rebuilds the image).
image_rootfs() {
	local dir=$1
	mmdebstrap --quiet --variant=minbase --mode=root \
		--include=systemd-sysv,udev,openssh-server,iproute2,iputils-ping \
		--customize-hook='chroot "$1" systemctl enable systemd-networkd ssh' \
		--customize-hook='printf "/dev/vda / ext4 defaults 0 1\n" > "$1/etc/fstab"' \
		bookworm "$dir"
	# No static hostname, no keys and not the build machine's resolver: the
	# initramfs writes them per VM.
	rm -f "$dir/etc/hostname" "$dir/etc/resolv.conf" "$dir/root/.ssh/authorized_keys"
	mkdir -p "$dir/usr/local/sbin" "$dir/etc/systemd/network"
	cat >"$dir/usr/local/sbin/usher-console" <<'EOF'
#!/bin/sh
# Usher test image: the harness's console markers on the serial console
# (opened for each line: a hangup of the tty must not silence the rest).
echo "USHER-GUEST-UP $(hostname)" >/dev/ttyS0
i=0
while :; do
	echo "tick $i" >/dev/ttyS0
	i=$((i+1))
	sleep 1
done
EOF
	chmod 755 "$dir/usr/local/sbin/usher-console"
	cat >"$dir/etc/systemd/system/usher-console.service" <<'EOF'
[Unit]
Description=Usher test console markers
After=multi-user.target ssh.service

[Service]
Type=simple
ExecStart=/usr/local/sbin/usher-console

[Install]
WantedBy=multi-user.target
EOF
	chroot "$dir" systemctl enable usher-console.service >/dev/null 2>&1
	# No login prompt on the serial console: its getty hangs the tty up
	# when it starts (and there is no password to log in with).
	ln -sf /dev/null "$dir/etc/systemd/system/serial-getty@ttyS0.service"
}

cmd_image() {
	local cache=${1:?usage: image CACHE_DIR}
	need_root "mmdebstrap --mode=root, mkfs.ext4 -d"
	need_tools mmdebstrap mkfs.ext4 qemu-img flock sha256sum
	cmd_prepare "$cache" >/dev/null
	cache=$(cd "$cache" && pwd)
	local img=$cache/images
	mkdir -p "$img"
	(
		flock 7
		local stamp
		stamp=$({ declare -f image_rootfs; echo "$IMAGE_JSON"; } | sha256sum | cut -c1-16)
		if [ ! -s "$img/$IMAGE_NAME.qcow2" ] || [ "$(cat "$img/$IMAGE_NAME.stamp" 2>/dev/null)" != "$stamp" ]; then
			local tmp t0=$SECONDS
			tmp=$(mktemp -d "$cache/image.XXXXXX")
			trap 'rm -rf "$tmp"' EXIT
			log "building $IMAGE_NAME (mmdebstrap bookworm minbase; about a minute)"
			image_rootfs "$tmp/rootfs" >"$tmp/mmdebstrap.log" 2>&1 || { tail -30 "$tmp/mmdebstrap.log" >&2; die "mmdebstrap failed"; }
			truncate -s 1G "$tmp/base.raw"
			mkfs.ext4 -q -F -L root -d "$tmp/rootfs" "$tmp/base.raw"
			qemu-img convert -O qcow2 "$tmp/base.raw" "$tmp/base.qcow2"
			mv "$tmp/base.qcow2" "$img/$IMAGE_NAME.qcow2"
			echo "$stamp" >"$img/$IMAGE_NAME.stamp"
			rm -rf "$tmp"
			trap - EXIT
			log "built $img/$IMAGE_NAME.qcow2 in $((SECONDS - t0))s"
		fi
		# The store's boot files: hard links to the prepared kernel and
		# initramfs (replaced when those are rebuilt).
		local f
		for f in vmlinuz initramfs.gz; do
			if [ ! "$img/$f" -ef "$cache/$f" ]; then
				ln -f "$cache/$f" "$img/.$f.tmp" 2>/dev/null || cp "$cache/$f" "$img/.$f.tmp"
				mv -f "$img/.$f.tmp" "$img/$f"
			fi
		done
		if [ "$(cat "$img/$IMAGE_NAME.json" 2>/dev/null)" != "$IMAGE_JSON" ]; then
			echo "$IMAGE_JSON" >"$img/.$IMAGE_NAME.json.tmp"
			mv "$img/.$IMAGE_NAME.json.tmp" "$img/$IMAGE_NAME.json"
		fi
	) 7>>"$cache/.image.lock"
	echo "IMAGE_DIR=$img"
}

# ---------------------------------------------------------------- hosts

# alive PID: the process exists and is not a zombie (daemons are reparented
# to PID 1, which may reap them only seconds later).
alive() {
	[ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null &&
		! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

# The mount id (/proc/self/mountinfo) of the /run/netns mount that a
# harness run's "ip netns add" created; shared by all runs on this machine.
NETNS_MARK=/tmp/usher-harness-netns-mount

netns_mount_id() { awk '$5 == "/run/netns" { id = $1 } END { print id }' /proc/self/mountinfo; }

# netns_name RUN: the run's network namespace.
netns_name() { echo "ushlab-$(printf %s "$1" | sha256sum | cut -c1-8)"; }

# run_netns RUN: the recorded namespace of a started run.
run_netns() {
	local ns
	ns=$(cat "$1/netns" 2>/dev/null || true)
	[ -n "$ns" ] && [ -e "/run/netns/$ns" ] || die "$1: no lab namespace (run: $0 start $1)"
	echo "$ns"
}

# netns_up RUN: the namespace with lo and br0 (idempotent).
netns_up() {
	local run=$1 ns
	ns=$(netns_name "$run")
	echo "$ns" >"$run/netns"
	(
		flock 9 # serialises /run/netns creation and removal between runs
		if [ ! -e "/run/netns/$ns" ]; then
			local fresh=""
			[ -e /run/netns ] || fresh=1
			ip netns add "$ns"
			# ip netns add made /run/netns (a bind mount): note which mount,
			# so that the last harness run leaving it empty removes it.
			[ -z "$fresh" ] || netns_mount_id >"$NETNS_MARK"
		fi
	) 9<"$SELF"
	ip netns exec "$ns" sh -c "ip link set lo up &&
		if ! ip link show $LAB_BRIDGE >/dev/null 2>&1; then
			ip link add $LAB_BRIDGE type bridge forward_delay 0 stp_state 0 &&
			ip addr add $LAB_GW/$LAB_PREFIX dev $LAB_BRIDGE &&
			ip link set $LAB_BRIDGE up
		fi" || die "lab namespace $ns: cannot set up lo and $LAB_BRIDGE"
}

# netns_down RUN: kill what is left inside the namespace and delete it.
netns_down() {
	local run=$1 ns pid i
	ns=$(cat "$run/netns" 2>/dev/null || true)
	[ -n "$ns" ] || return 0
	if [ -e "/run/netns/$ns" ]; then
		# Everything in this namespace was started by this run.
		for i in 1 2 3; do
			local pids
			pids=$(ip netns pids "$ns" 2>/dev/null || true)
			[ -n "$pids" ] || break
			# shellcheck disable=SC2086
			kill -KILL $pids 2>/dev/null || true
			for pid in $pids; do wait_gone "$pid" || true; done
		done
		ip netns del "$ns" 2>/dev/null || log "ip netns del $ns failed"
	fi
	(
		flock 9
		# /run/netns goes only if a harness run made it (the same mount is
		# still there) and no namespace is left in it, whoever's.
		if [ -s "$NETNS_MARK" ]; then
			if [ ! -d /run/netns ] || [ "$(netns_mount_id)" != "$(cat "$NETNS_MARK")" ]; then
				rm -f "$NETNS_MARK" # gone, or no longer the mount we saw made
			elif [ -z "$(ls -A /run/netns 2>/dev/null)" ]; then
				umount /run/netns && rmdir /run/netns && rm -f "$NETNS_MARK" || true
			fi
		fi
	) 9<"$SELF"
}

# host_dirs RUN N: prepares hostN's folders and config (idempotent).
host_dirs() {
	local run=$1 n=$2 h="$1/host$2"
	mkdir -p "$h"/{run,lib,etc,log} "$run/cache"
	if [ ! -e "$h/etc/.usher" ]; then
		cp -r /etc/libvirt/. "$h/etc/" 2>/dev/null || true
		cat >"$h/etc/libvirtd.conf" <<EOF
# written by usher testdata/libvirt/harness.sh
host_uuid = "${UUIDS[$n]}"
listen_tcp = 0
listen_tls = 0
unix_sock_rw_perms = "0777"
auth_unix_rw = "none"
auth_unix_ro = "none"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
EOF
		cat >"$h/etc/qemu.conf" <<EOF
# written by usher testdata/libvirt/harness.sh
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
stdio_handler = "file"
namespaces = [ ]
EOF
		touch "$h/etc/.usher"
	fi
}

start_host() {
	local run=$1 n=$2 h="$1/host$2"
	local pidf="$run/host$n.pid" sock="$h/run/libvirt-sock" ns
	ns=$(run_netns "$run")
	if [ -s "$pidf" ] && alive "$(cat "$pidf")"; then
		log "host$n already running (pid $(cat "$pidf"))"
	else
		host_dirs "$run" "$n"
		rm -f "$pidf" "$h/run/libvirtd.pid" "$sock" "$h/run/libvirt-sock-ro" "$h/run/libvirt-admin-sock"
		# libvirtd -d forks; the pid file (inside the namespace's /run/libvirt)
		# names the daemon, which keeps the namespace alive together with
		# the QEMUs it starts. Its unix socket is a file, reachable from the
		# root namespace; its guests' taps are created in the lab namespace.
		ip netns exec "$ns" unshare -m sh -c "mkdir -p /run/libvirt /var/lib/libvirt /etc/libvirt /var/log/libvirt /var/cache/libvirt &&
			mount --make-rprivate / &&
			mount --bind '$h/run' /run/libvirt &&
			mount --bind '$h/lib' /var/lib/libvirt &&
			mount --bind '$h/etc' /etc/libvirt &&
			mount --bind '$h/log' /var/log/libvirt &&
			mount --bind '$run/cache' /var/cache/libvirt &&
			exec libvirtd -d -p /run/libvirt/libvirtd.pid" ||
			die "host$n: libvirtd failed to start (see $h/log/libvirtd.log)"
	fi
	echo "$sock" >"$run/host$n.sock"
	echo "qemu+unix:///system?socket=$sock" >"$run/host$n.uri"
	local i pid=""
	for ((i = 0; i < WAIT_SECS * 10; i++)); do
		[ -z "$pid" ] && [ -s "$h/run/libvirtd.pid" ] && pid=$(cat "$h/run/libvirtd.pid") && echo "$pid" >"$pidf"
		if [ -n "$pid" ] && [ -S "$sock" ] &&
			virsh -q -c "qemu+unix:///system?socket=$sock" version >/dev/null 2>&1; then
			log "host$n up: pid $pid socket $sock"
			return 0
		fi
		if [ -n "$pid" ] && ! alive "$pid"; then break; fi
		sleep 0.1
	done
	tail -20 "$h/log/libvirtd.log" >&2 2>/dev/null || true
	die "host$n: libvirtd did not answer on $sock within ${WAIT_SECS}s"
}

cmd_start() {
	local run=${1:?usage: start RUN_DIR}
	need_root "libvirtd system instances, mount and network namespaces"
	need_tools libvirtd virsh qemu-system-x86_64 unshare ip flock mountpoint sha256sum
	mkdir -p "$run"
	run=$(cd "$run" && pwd)
	rm -f "$run/stopped"
	netns_up "$run"
	start_host "$run" 1
	start_host "$run" 2
	echo "SOCK1=$(cat "$run/host1.sock")"
	echo "SOCK2=$(cat "$run/host2.sock")"
	echo "NETNS=$(cat "$run/netns")"
}

cmd_start_host() {
	local run=${1:?usage: start-host RUN_DIR N} n=${2:?usage: start-host RUN_DIR N}
	run=$(cd "$run" && pwd)
	start_host "$run" "$n"
}

wait_gone() {
	local pid=$1 i
	for ((i = 0; i < WAIT_SECS * 10; i++)); do
		alive "$pid" || return 0
		sleep 0.1
	done
	return 1
}

cmd_kill_host() {
	local run=${1:?usage: kill-host RUN_DIR N} n=${2:?usage: kill-host RUN_DIR N}
	local pid
	pid=$(cat "$run/host$n.pid" 2>/dev/null || true)
	[ -n "$pid" ] && alive "$pid" || die "host$n is not running"
	kill -KILL "$pid"
	wait_gone "$pid" || die "host$n (pid $pid) did not die"
	rm -f "$run/host$n.pid"
}

# ---------------------------------------------------------------- lab services

# pidfile_alive FILE COMM: the pid in FILE if that process runs COMM.
pidfile_alive() {
	local pid
	pid=$(cat "$1" 2>/dev/null || true)
	[ -n "$pid" ] && alive "$pid" && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] && echo "$pid"
}

# stop_pidfile FILE COMM [GROUP]: TERM (then KILL) the process (group).
stop_pidfile() {
	local pid
	pid=$(pidfile_alive "$1" "$2") || { rm -f "$1"; return 0; }
	local target=$pid
	[ "${3:-}" = group ] && target=-$pid
	kill -TERM -- "$target" 2>/dev/null || true
	wait_gone "$pid" || { kill -KILL -- "$target" 2>/dev/null || true; wait_gone "$pid" || true; }
	rm -f "$1"
}

lab_print() {
	local run=$1 lab=$1/lab
	echo "NETNS=$(cat "$run/netns")"
	echo "BRIDGE=$LAB_BRIDGE"
	echo "GATEWAY=$LAB_GW"
	echo "NETMASK=$LAB_NETMASK"
	echo "DOMAIN=$(cat "$lab/domain")"
	echo "DNS_FORWARD=127.0.0.1:$(cat "$lab/forward.port")"
	echo "TSIG_NAME=$TSIG_NAME"
	echo "TSIG_SECRET=$(cat "$lab/tsig.secret")"
	echo "TSIG_KEY_FILE=$lab/tsig.key"
	echo "RESOLV_CONF=$lab/resolv.conf"
	echo "DHCP_HOSTS=$lab/dhcp-hosts"
}

start_named() {
	local run=$1 ns=$2 domain=$3 lab=$1/lab
	local nd=$lab/named z
	# Root-owned folder, named as root without -u (a named running as root
	# has no CAP_DAC_OVERRIDE: it cannot write a folder owned by bind).
	mkdir -p "$nd"
	cat >"$nd/named.conf" <<EOF
// written by usher testdata/libvirt/harness.sh
include "$lab/tsig.key";
options {
	directory "$nd";
	pid-file "$nd/named.pid";
	session-keyfile "$nd/session.key";
	listen-on port 53 { $LAB_GW; };
	listen-on-v6 { none; };
	recursion no;
	allow-query { any; };
	dnssec-validation no;
	notify no;
};
controls { };
logging {
	channel f { file "$nd/named.log"; severity info; print-time yes; };
	category default { f; };
	category update { f; };
};
zone "$domain" { type primary; file "$nd/forward.zone"; allow-update { key "$TSIG_NAME"; }; };
zone "$LAB_REVZONE" { type primary; file "$nd/reverse.zone"; allow-update { key "$TSIG_NAME"; }; };
EOF
	for z in forward reverse; do
		rm -f "$nd/$z.zone.jnl"
		cat >"$nd/$z.zone" <<EOF
\$TTL 60
@ IN SOA ns1.$domain. hostmaster.$domain. ( 1 60 60 3600 60 )
@ IN NS ns1.$domain.
EOF
	done
	echo "ns1.$domain. IN A $LAB_GW" >>"$nd/forward.zone"
	named-checkconf "$nd/named.conf" || die "named-checkconf $nd/named.conf failed"
	ip netns exec "$ns" named -4 -c "$nd/named.conf" </dev/null >>"$nd/named.out" 2>&1 || die "named failed to start (see $nd/named.log)"
	local i
	for ((i = 0; i < WAIT_SECS * 10; i++)); do
		if ip netns exec "$ns" dig +short +time=1 +tries=1 @"$LAB_GW" "$domain" SOA 2>/dev/null | grep -q "^ns1\.$domain\. "; then
			cat "$nd/named.pid" >/dev/null 2>&1 || die "named: no pid file"
			return 0
		fi
		sleep 0.1
	done
	tail -20 "$nd/named.log" >&2 2>/dev/null || true
	die "named did not answer on $LAB_GW:53 within ${WAIT_SECS}s"
}

start_dnsmasq() {
	local run=$1 ns=$2 domain=$3 lab=$1/lab
	touch "$lab/dhcp-hosts"
	cat >"$lab/dnsmasq.conf" <<EOF
# written by usher testdata/libvirt/harness.sh
# DHCP only (port=0 turns DNS off); only the MACs in dhcp-hosts get a lease
port=0
interface=$LAB_BRIDGE
bind-interfaces
except-interface=lo
dhcp-authoritative
dhcp-range=10.77.0.0,static,$LAB_NETMASK,12h
dhcp-option=option:router,$LAB_GW
dhcp-option=option:dns-server,$LAB_GW
dhcp-option=option:domain-name,$domain
dhcp-hostsfile=$lab/dhcp-hosts
dhcp-leasefile=$lab/dnsmasq.leases
pid-file=$lab/dnsmasq.pid
log-dhcp
log-facility=$lab/dnsmasq.log
user=root
EOF
	rm -f "$lab/dnsmasq.pid"
	ip netns exec "$ns" dnsmasq --conf-file="$lab/dnsmasq.conf" </dev/null >>"$lab/dnsmasq.out" 2>&1 || die "dnsmasq failed to start (see $lab/dnsmasq.log)"
	local i
	for ((i = 0; i < WAIT_SECS * 10; i++)); do
		pidfile_alive "$lab/dnsmasq.pid" dnsmasq >/dev/null && return 0
		sleep 0.1
	done
	die "dnsmasq wrote no pid file within ${WAIT_SECS}s (see $lab/dnsmasq.log)"
}

# start_forward RUN NS DOMAIN: socat on 127.0.0.1:<free port> (root namespace),
# each connection relayed to named's TCP port inside the lab.
start_forward() {
	local run=$1 ns=$2 domain=$3 lab=$1/lab port try i pid
	for ((try = 0; try < 20; try++)); do
		port=$((20000 + (RANDOM * 32768 + RANDOM) % 12000))
		[ -z "$(ss -Hltn "sport = :$port" 2>/dev/null)" ] || continue
		rm -f "$lab/forward.pid"
		# Its own session: stop kills the whole group (the per-connection
		# children too).
		setsid sh -c 'echo $$ >"$1"; shift; exec "$@"' sh "$lab/forward.pid" \
			socat TCP-LISTEN:"$port",bind=127.0.0.1,fork,reuseaddr \
			EXEC:"ip netns exec $ns socat STDIO TCP\:$LAB_GW\:53" \
			</dev/null >>"$lab/forward.log" 2>&1 &
		for ((i = 0; i < WAIT_SECS * 10; i++)); do
			pid=$(cat "$lab/forward.pid" 2>/dev/null || true)
			if [ -n "$pid" ] && ! alive "$pid"; then
				pid=""
				break # port taken after all: next one
			fi
			if [ -n "$pid" ] && [ -n "$(ss -Hltn "sport = :$port" 2>/dev/null)" ]; then
				break
			fi
			sleep 0.1
		done
		[ -n "$pid" ] || continue
		echo "$port" >"$lab/forward.port"
		# End to end: root namespace -> socat -> named.
		dig +short +tcp +time=2 +tries=2 @127.0.0.1 -p "$port" "$domain" SOA 2>/dev/null | grep -q "^ns1\.$domain\. " ||
			die "DNS forwarder 127.0.0.1:$port does not reach named (see $lab/forward.log)"
		return 0
	done
	die "DNS forwarder: no free port found"
}

cmd_lab_services() {
	local run=${1:?usage: lab-services RUN_DIR DOMAIN} domain=${2:?usage: lab-services RUN_DIR DOMAIN}
	need_root "network namespace"
	need_tools ip ss named named-checkconf dnsmasq socat dig setsid base64
	[[ "$domain" =~ ^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$ ]] || die "bad domain $domain (lower-case DNS name)"
	run=$(cd "$run" && pwd)
	local ns lab=$run/lab
	ns=$(run_netns "$run")
	mkdir -p "$lab"
	if [ -s "$lab/domain" ] && [ "$(cat "$lab/domain")" != "$domain" ]; then
		die "lab services already set up for domain $(cat "$lab/domain")"
	fi
	echo "$domain" >"$lab/domain"
	if [ ! -s "$lab/tsig.secret" ]; then
		head -c 32 /dev/urandom | base64 -w0 >"$lab/tsig.secret.tmp"
		mv "$lab/tsig.secret.tmp" "$lab/tsig.secret"
	fi
	cat >"$lab/tsig.key" <<EOF
key "$TSIG_NAME" {
	algorithm hmac-sha256;
	secret "$(cat "$lab/tsig.secret")";
};
EOF
	chmod 600 "$lab/tsig.key" "$lab/tsig.secret"
	printf 'nameserver %s\nsearch %s\noptions timeout:1 attempts:2\n' "$LAB_GW" "$domain" >"$lab/resolv.conf"
	pidfile_alive "$lab/named/named.pid" named >/dev/null || start_named "$run" "$ns" "$domain"
	pidfile_alive "$lab/dnsmasq.pid" dnsmasq >/dev/null || start_dnsmasq "$run" "$ns" "$domain"
	pidfile_alive "$lab/forward.pid" socat >/dev/null || start_forward "$run" "$ns" "$domain"
	lab_print "$run"
}

# cmd_lab_dhcp_reload RUN: dnsmasq re-reads dhcp-hosts on SIGHUP.
cmd_lab_dhcp_reload() {
	local run=${1:?usage: lab-dhcp-reload RUN_DIR} pid
	pid=$(pidfile_alive "$run/lab/dnsmasq.pid" dnsmasq) || die "dnsmasq is not running (run: $0 lab-services $run DOMAIN)"
	kill -HUP "$pid"
}

cmd_lab_exec() {
	local run=${1:?usage: lab-exec RUN_DIR CMD...}
	shift
	[ $# -gt 0 ] || die "usage: lab-exec RUN_DIR CMD..."
	local ns resolv=$run/lab/resolv.conf
	ns=$(run_netns "$run")
	if [ -s "$resolv" ]; then
		# ip netns exec runs CMD in a private mount namespace: the bind mount
		# stays there (the machine's /etc is not touched).
		exec ip netns exec "$ns" sh -c 'mount --bind "$0" /etc/resolv.conf && exec "$@"' "$resolv" "$@"
	fi
	exec ip netns exec "$ns" "$@"
}

# ---------------------------------------------------------------- stop

cmd_stop() {
	local run=${1:?usage: stop RUN_DIR} n pid qp
	[ -d "$run" ] || return 0
	touch "$run/stopped"
	for n in 1 2; do
		local h="$run/host$n"
		pid=$(cat "$run/host$n.pid" 2>/dev/null || true)
		if [ -n "$pid" ] && alive "$pid"; then
			# Destroy its guests through libvirt first (bounded), then the daemon.
			local uri="qemu+unix:///system?socket=$h/run/libvirt-sock" d
			for d in $(timeout 10 virsh -q -c "$uri" list --name 2>/dev/null || true); do
				timeout 10 virsh -q -c "$uri" destroy "$d" >/dev/null 2>&1 || true
			done
			kill -TERM "$pid" 2>/dev/null || true
			wait_gone "$pid" || { kill -KILL "$pid" 2>/dev/null || true; wait_gone "$pid" || true; }
		fi
		rm -f "$run/host$n.pid"
		# QEMUs this host's libvirtd started and that outlived it.
		for qp in "$h"/run/qemu/*.pid; do
			[ -e "$qp" ] || continue
			pid=$(cat "$qp" 2>/dev/null || true)
			if [ -n "$pid" ] && alive "$pid" && grep -q qemu "/proc/$pid/comm" 2>/dev/null; then
				kill -KILL "$pid" 2>/dev/null || true
				wait_gone "$pid" || true
			fi
		done
	done
	# The lab services, then whatever is left in the namespace.
	stop_pidfile "$run/lab/forward.pid" socat group
	stop_pidfile "$run/lab/dnsmasq.pid" dnsmasq
	stop_pidfile "$run/lab/named/named.pid" named
	netns_down "$run"
}

cmd_watch() {
	local run=${1:?usage: watch RUN_DIR PID [--remove]} pid=${2:?usage: watch RUN_DIR PID [--remove]}
	while alive "$pid" && [ -d "$run" ] && [ ! -e "$run/stopped" ]; do sleep 1; done
	[ -d "$run" ] || return 0
	if [ ! -e "$run/stopped" ]; then
		cmd_stop "$run"
		[ "${3:-}" != "--remove" ] || rm -rf "$run"
	fi
}

# The whole dispatch is one function called on the last line, followed by
# exit on that same line: bash reads scripts as it runs them, so a script
# edited while a long "watch" runs must not be read on after it returns.
main() {
	case "${1:-}" in
	install) shift; cmd_install "$@" ;;
	prepare) shift; cmd_prepare "$@" ;;
	image) shift; cmd_image "$@" ;;
	start) shift; cmd_start "$@" ;;
	start-host) shift; cmd_start_host "$@" ;;
	kill-host) shift; cmd_kill_host "$@" ;;
	lab-services) shift; cmd_lab_services "$@" ;;
	lab-dhcp-reload) shift; cmd_lab_dhcp_reload "$@" ;;
	lab-exec) shift; cmd_lab_exec "$@" ;;
	stop) shift; cmd_stop "$@" ;;
	watch) shift; cmd_watch "$@" ;;
	*) die "usage: $0 install | prepare CACHE_DIR | image CACHE_DIR | start RUN_DIR | start-host RUN_DIR N | kill-host RUN_DIR N | lab-services RUN_DIR DOMAIN | lab-dhcp-reload RUN_DIR | lab-exec RUN_DIR CMD... | stop RUN_DIR | watch RUN_DIR PID [--remove]" ;;
	esac
}

main "$@"; exit
