#!/usr/bin/env bash
# Site-integration harness: real OpenLDAP slapd and BIND named on loopback.
#   harness.sh install            install the Debian packages (root)
#   harness.sh start-slapd DIR    slapd with suffix dc=usher,dc=test (rootdn cn=admin, pw adminpw)
#   harness.sh start-named DIR    named with zones usher.test and 10.in-addr.arpa, TSIG key usher-key.
#   harness.sh stop DIR           stop exactly the processes started in DIR (pids in DIR/*.pid)
# Each start prints KEY=VALUE lines (URL, ADDR, SECRET). The Go tests
# (lua/modules/sitetest, build tag site) do the same from Go and only call
# `install`.
set -euo pipefail
PKGS="slapd ldap-utils bind9 bind9-dnsutils"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

case "${1:-}" in
install)
  missing=()
  for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && exit 0
  if [ "$(id -u)" != 0 ]; then echo "missing Debian packages: ${missing[*]} (need root to install)" >&2; exit 1; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  ;;
start-slapd)
  d=$(realpath "$2"); mkdir -p "$d/db"; port=$(free_port)
  cat > "$d/slapd.conf" <<CONF
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile $d/slapd.pid
database mdb
maxsize 104857600
suffix "dc=usher,dc=test"
rootdn "cn=admin,dc=usher,dc=test"
rootpw adminpw
directory $d/db
access to attrs=userPassword by self write by anonymous auth by * none
access to * by * read
CONF
  /usr/sbin/slapd -f "$d/slapd.conf" -h "ldap://127.0.0.1:$port/"
  for _ in $(seq 50); do [ -s "$d/slapd.pid" ] && break; sleep 0.1; done
  echo "URL=ldap://127.0.0.1:$port"
  ;;
start-named)
  d=$(realpath "$2"); mkdir -p "$d"; port=$(free_port)
  secret=$(head -c 32 /dev/urandom | base64)
  soa='$TTL 300
@ IN SOA ns.usher.test. admin.usher.test. 1 3600 600 86400 300
@ IN NS ns.usher.test.'
  printf '%s\nns IN A 127.0.0.1\n' "$soa" > "$d/fwd.zone"; printf '%s\n' "$soa" > "$d/rev.zone"
  cat > "$d/named.conf" <<CONF
options { directory "$d"; pid-file "$d/named.pid"; session-keyfile "$d/session.key";
  listen-on port $port { 127.0.0.1; }; listen-on-v6 { none; }; recursion no; dnssec-validation no; notify no; };
controls { };
key "usher-key." { algorithm hmac-sha256; secret "$secret"; };
zone "usher.test" { type primary; file "$d/fwd.zone"; allow-update { key "usher-key."; }; };
zone "10.in-addr.arpa" { type primary; file "$d/rev.zone"; allow-update { key "usher-key."; }; };
CONF
  /usr/sbin/named -4 -c "$d/named.conf"
  for _ in $(seq 50); do [ -s "$d/named.pid" ] && break; sleep 0.1; done
  echo "ADDR=127.0.0.1:$port"; echo "SECRET=$secret"
  ;;
stop)
  d=$(realpath "$2")
  for f in "$d"/slapd.pid "$d"/named.pid; do
    [ -s "$f" ] || continue
    pid=$(cat "$f"); kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  ;;
*) echo "usage: $0 install|start-slapd DIR|start-named DIR|stop DIR" >&2; exit 2 ;;
esac
