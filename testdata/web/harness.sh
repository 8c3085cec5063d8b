#!/usr/bin/env bash
# Web console test harness: installs a real browser for the chromedp tests.
#
# Usage:
#   harness.sh install     apt-get install chromium if missing (root); prints CHROMIUM=<path>
#
# What it touches: apt (install only). The tests start and stop their own
# headless Chromium (chromedp), with its own temporary profile.
set -euo pipefail
die() { echo "web harness: $*" >&2; exit 1; }
find_chromium() { command -v chromium || command -v chromium-browser || true; }
case "${1:-}" in
install)
	c=$(find_chromium)
	if [ -z "$c" ]; then
		[ "$(id -u)" = 0 ] || die "chromium is missing and we are not root: apt-get install -y --no-install-recommends chromium (Debian package chromium)"
		export DEBIAN_FRONTEND=noninteractive
		echo "web harness: installing chromium (about 160 MB)" >&2
		if ! apt-get install -y -qq --no-install-recommends chromium >/dev/null; then
			apt-get update -qq
			apt-get install -y -qq --no-install-recommends chromium >/dev/null
		fi
		c=$(find_chromium)
		[ -n "$c" ] || die "still no chromium after installing the Debian package chromium"
	fi
	echo "CHROMIUM=$c"
	;;
*) die "usage: $0 install" ;;
esac
