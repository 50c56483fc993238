#!/usr/bin/env bash
# Make sure the Debian packages the tests start on loopback are installed.
#
#   tools/system-packages.sh
#
# Each real component is found by a command it ships.  When some are
# missing: as root, `apt-get update` once and `apt-get install -y` them;
# otherwise print what to install and fail (tools/apt-install.sh).
set -euo pipefail
. "$(dirname "$0")/apt-install.sh"

# command -> Debian package
declare -A NEEDED=(
  [initdb]=postgresql          # PostgreSQL store tests (a private cluster per run)
  [redis-server]=redis-server  # the cross-node bus
  [redis-cli]=redis-tools      # the tests read the bus's keys (TTLs) as an operator would
  [haproxy]=haproxy            # several gateway nodes behind a load balancer
  [tinyproxy]=tinyproxy        # the connector behind an HTTP proxy
  [chromium]=chromium          # pairing page and `lmdevice serve` in a real browser
  [systemd-analyze]=systemd    # `systemd-analyze verify` on deploy/*.service
  [sqlite3]=sqlite3            # the online backup command of docs/operations.md
  [curl]=curl                  # README.md's pairing without a browser (tests/test_readme.py)
  [nginx]=nginx                # deploy/nginx/ snippets run in front of a real gateway
  [ngx_stream]=libnginx-mod-stream
  [node]=nodejs                # MQTT.js for the browser MQTT test
  [npm]=npm
)

have() {
  command -v "$1" >/dev/null 2>&1 && return 0
  # Daemons (haproxy, nginx) are in /usr/sbin, off a normal user's PATH; the
  # tests look there too.
  [ -x "/usr/sbin/$1" ] && return 0
  # PostgreSQL's server binaries live in a versioned folder, off PATH.
  [ "$1" = initdb ] && compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && return 0
  # nginx's stream module (TLS in front of the gateway) is a package of its own.
  [ "$1" = ngx_stream ] && [ -e /usr/lib/nginx/modules/ngx_stream_module.so ]
}

missing=()
for cmd in "${!NEEDED[@]}"; do
  have "$cmd" || missing+=("${NEEDED[$cmd]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
apt_install "The test suite" "${missing[@]}"
# Packaged daemons must not run as system services here: the tests start
# private instances on loopback.
for svc in postgresql redis-server haproxy tinyproxy nginx; do
  if command -v systemctl >/dev/null 2>&1; then systemctl disable --now "$svc" >/dev/null 2>&1 || true; fi
  service "$svc" stop >/dev/null 2>&1 || true
done
