# Sourced by tools/system-packages.sh and tools/venv-module.sh, not run.
#
#   apt_install WHAT PACKAGE...
#
# As root on a machine with apt-get: `apt-get update` once and install the
# Debian PACKAGEs (no recommends). Otherwise say that WHAT needs them, print
# the command that installs them, and exit 1.
apt_install() {
  local what=$1
  shift
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "$what needs these Debian packages: $*" >&2
    echo "Install them with: sudo apt-get update && sudo apt-get install -y $*" >&2
    exit 1
  fi
  echo "installing Debian packages for $what: $*"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "$@"
}
