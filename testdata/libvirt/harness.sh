#!/usr/bin/env bash
# Usher libvirt test harness: installs libvirt/QEMU, prepares a tiny guest
# (Debian cloud kernel + busybox initramfs) and runs two libvirt hosts on
# this machine, each libvirtd in its own mount namespace with its own
# runtime, state, config and log folders and its own host UUID, so that live
# migration between them works (see /work/shared/testbed.md).
#
# Usage:
#   harness.sh install                 apt-get install what is missing (root)
#   harness.sh prepare CACHE_DIR       kernel + initramfs into CACHE_DIR (idempotent)
#   harness.sh start RUN_DIR           start host1 and host2
#   harness.sh start-host RUN_DIR N    (re)start host N only (1 or 2)
#   harness.sh kill-host RUN_DIR N     SIGKILL host N's libvirtd (QEMU guests survive)
#   harness.sh stop RUN_DIR            destroy their guests, stop both daemons
#   harness.sh watch RUN_DIR PID [--remove]
#                                      stop RUN_DIR (and remove it) once process PID has exited
#                                      (run detached: cleans up after a test
#                                      binary that panicked or was killed)
#
# Files in RUN_DIR: hostN/{run,lib,etc,log} and cache (bind-mounted in host N's
# namespace on /run/libvirt, /var/lib/libvirt, /etc/libvirt, /var/log/libvirt,
# /var/cache/libvirt), hostN.pid (libvirtd pid), hostN.sock (its socket,
# reachable from the root namespace), hostN.uri (qemu+unix URI for it).
#
# What it touches: apt and the libvirt-qemu user / kvm group (install only), CACHE_DIR, RUN_DIR, the processes it
# started (the libvirtds by pid, the QEMUs by the pid files those libvirtds
# wrote). Nothing in /etc, /run or /var/lib of the machine itself; the bind
# mounts live and die with the namespaces, so nothing needs unmounting; it
# only creates the (empty) mount points /run/libvirt, /var/lib/libvirt,
# /var/log/libvirt and /var/cache/libvirt if they do not exist.
set -euo pipefail

PACKAGES=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 qemu-utils busybox-static)
# command -> Debian package, for error messages
declare -A TOOL_PKG=(
	[libvirtd]=libvirt-daemon [virsh]=libvirt-clients [qemu-system-x86_64]=qemu-system-x86
	[qemu-img]=qemu-utils [busybox]=busybox-static [unshare]=util-linux [dpkg-deb]=dpkg
	[apt-get]=apt [gzip]=gzip
)
UUIDS=("" "aaaaaaaa-2222-3333-4444-555555555555" "11111111-2222-3333-4444-555555555555")
WAIT_SECS=${HARNESS_WAIT_SECS:-30}

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

cmd_prepare() {
	local cache=${1:?usage: prepare CACHE_DIR}
	need_tools apt-get dpkg-deb busybox gzip
	mkdir -p "$cache"
	cache=$(cd "$cache" && pwd)
	if [ ! -s "$cache/vmlinuz" ]; then
		local pkg
		pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
			sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-cloud-amd64\)$/\1/p' | sort -V | tail -1)
		[ -n "$pkg" ] || die "no linux-image-*-cloud-amd64 known to apt (run apt-get update)"
		local tmp
		tmp=$(mktemp -d "$cache/kernel.XXXXXX")
		log "downloading $pkg"
		(cd "$tmp" && apt-get download -qq "$pkg" >/dev/null) || { rm -rf "$tmp"; die "apt-get download $pkg failed"; }
		dpkg-deb -x "$tmp"/*.deb "$tmp/x"
		local k
		k=$(ls "$tmp"/x/boot/vmlinuz-* | head -1)
		cp "$k" "$cache/vmlinuz.tmp" && mv "$cache/vmlinuz.tmp" "$cache/vmlinuz"
		basename "$k" >"$cache/vmlinuz.version"
		rm -rf "$tmp"
	fi
	# The initramfs is rebuilt when this script changes (its init is below).
	local stamp
	stamp=$(sha256sum "$0" | cut -c1-16)
	if [ ! -s "$cache/initramfs.gz" ] || [ "$(cat "$cache/initramfs.stamp" 2>/dev/null)" != "$stamp" ]; then
		local root
		root=$(mktemp -d "$cache/initramfs.XXXXXX")
		mkdir -p "$root"/{bin,proc,sys,dev,tmp}
		cp "$(command -v busybox)" "$root/bin/busybox"
		cat >"$root/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
h=usher-guest
for a in $(cat /proc/cmdline); do
	case "$a" in usher.hostname=*) h="${a#usher.hostname=}" ;; esac
done
hostname "$h"
echo "USHER-GUEST-UP $h"
i=0
while true; do
	echo "tick $i"
	i=$((i+1))
	sleep 1
done
EOF
		chmod 755 "$root/init"
		(cd "$root" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1 >"$cache/initramfs.gz.tmp")
		mv "$cache/initramfs.gz.tmp" "$cache/initramfs.gz"
		echo "$stamp" >"$cache/initramfs.stamp"
		rm -rf "$root"
	fi
	echo "KERNEL=$cache/vmlinuz"
	echo "INITRD=$cache/initramfs.gz"
}

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

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
	local pidf="$run/host$n.pid" sock="$h/run/libvirt-sock"
	if [ -s "$pidf" ] && alive "$(cat "$pidf")"; then
		log "host$n already running (pid $(cat "$pidf"))"
	else
		host_dirs "$run" "$n"
		rm -f "$pidf" "$h/run/libvirtd.pid" "$sock" "$h/run/libvirt-sock-ro" "$h/run/libvirt-admin-sock"
		# libvirtd -d forks; the pid file (inside the namespace's /run/libvirt)
		# names the daemon, which keeps the namespace alive together with
		# the QEMUs it starts.
		unshare -m sh -c "mkdir -p /run/libvirt /var/lib/libvirt /etc/libvirt /var/log/libvirt /var/cache/libvirt &&
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
	[ "$(id -u)" = 0 ] || die "must run as root (libvirtd system instances and mount namespaces)"
	need_tools libvirtd virsh qemu-system-x86_64 unshare
	mkdir -p "$run"
	run=$(cd "$run" && pwd)
	rm -f "$run/stopped"
	start_host "$run" 1
	start_host "$run" 2
	echo "SOCK1=$(cat "$run/host1.sock")"
	echo "SOCK2=$(cat "$run/host2.sock")"
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

case "${1:-}" in
install) shift; cmd_install "$@" ;;
prepare) shift; cmd_prepare "$@" ;;
start) shift; cmd_start "$@" ;;
start-host) shift; cmd_start_host "$@" ;;
kill-host) shift; cmd_kill_host "$@" ;;
stop) shift; cmd_stop "$@" ;;
watch) shift; cmd_watch "$@" ;;
*) die "usage: $0 install | prepare CACHE_DIR | start RUN_DIR | start-host RUN_DIR N | kill-host RUN_DIR N | stop RUN_DIR | watch RUN_DIR PID [--remove]" ;;
esac
