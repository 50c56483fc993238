#!/usr/bin/env bash
# Best effort: installs the optional comparison brokers for `make bench`.
# Never fails: bench/run.py skips (with a note) whatever is not installed.
#   mosquitto  Debian package (only as root with apt-get)
#   amqtt      its own virtualenv, var/bench/amqtt-venv (var/ is not versioned)
set -u
cd "$(dirname "$0")/.."
VENV=var/bench/amqtt-venv
PY=${PYTHON:-python3}
export DEBIAN_FRONTEND=noninteractive

if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then
    :
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bench: installing mosquitto with apt-get"
    timeout 300 apt-get install -y -q mosquitto >/dev/null 2>&1 \
        || { timeout 120 apt-get update -q >/dev/null 2>&1 \
             && timeout 300 apt-get install -y -q mosquitto >/dev/null 2>&1; } \
        || echo "bench: mosquitto could not be installed (no network?): it will be skipped"
else
    echo "bench: mosquitto is not installed (apt-get install mosquitto): it will be skipped"
fi

if [ ! -x "$VENV/bin/amqtt" ]; then
    echo "bench: installing amqtt into $VENV"
    mkdir -p var/bench
    if ! { "$PY" -m venv "$VENV" \
           && timeout 300 "$VENV/bin/pip" install -q --retries 1 --timeout 15 -r bench/requirements-amqtt.txt; } \
           >var/bench/amqtt-install.log 2>&1; then
        echo "bench: amqtt could not be installed (see var/bench/amqtt-install.log): it will be skipped"
        rm -rf "$VENV"
    fi
fi
exit 0
