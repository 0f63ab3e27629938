#!/usr/bin/env bash
# Install (once, into a cached virtualenv) and start the warehouse emulators the
# Snowflake and BigQuery tests talk to, on fixed loopback ports, and wait until
# they answer. Idempotent: an emulator already answering is left alone.
#
#   fakesnow   (Snowflake protocol, Arrow results)  127.0.0.1:${WSYNC_FAKESNOW_PORT:-18645}
#   bqemulator (BigQuery REST v2)                    127.0.0.1:${WSYNC_BQEMULATOR_PORT:-18650}
#
# Usage: tests/emulators/start.sh [install|start]   (default: both)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/wsync-ci"
# Two virtualenvs: fakesnow and bqemulator pin conflicting dependencies.
snow_venv="$cache/venv-fakesnow"
bq_venv="$cache/venv-bqemulator"
logs="$cache/logs"
fakesnow_port="${WSYNC_FAKESNOW_PORT:-18645}"
bq_port="${WSYNC_BQEMULATOR_PORT:-18650}"
# Pinned: the tests know these versions' quirks (see the README's emulator notes).
snow_packages=("fakesnow[server]==0.12.1" "snowflake-connector-python<5")
bq_packages=("bqemulator==1.4.0" "numpy")

install_venv() { # venv, packages...
    local venv="$1"; shift
    local stamp="$venv/.wsync-installed-$(printf '%s\n' "$@" | sha256sum | cut -c1-16)"
    if [ -f "$stamp" ]; then return 0; fi
    mkdir -p "$cache"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$@"
    touch "$stamp"
}

install() {
    install_venv "$snow_venv" "${snow_packages[@]}"
    install_venv "$bq_venv" "${bq_packages[@]}"
}

answers() { # port
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

wait_for() { # name, port, pid
    for _ in $(seq 1 60); do
        if answers "$2"; then echo "$1 is up on 127.0.0.1:$2"; return 0; fi
        if ! kill -0 "$3" 2>/dev/null; then break; fi
        sleep 1
    done
    echo "$1 did not come up on 127.0.0.1:$2; see $logs/$1.log" >&2
    tail -n 20 "$logs/$1.log" >&2 || true
    return 1
}

start() {
    mkdir -p "$logs"
    if ! answers "$fakesnow_port"; then
        nohup "$snow_venv/bin/python" "$here/fakesnow_server.py" "$fakesnow_port" \
            >"$logs/fakesnow.log" 2>&1 &
        wait_for fakesnow "$fakesnow_port" $!
    else
        echo "fakesnow is already up on 127.0.0.1:$fakesnow_port"
    fi
    if ! answers "$bq_port"; then
        nohup "$bq_venv/bin/python" "$here/bqemulator_server.py" "$bq_port" \
            >"$logs/bqemulator.log" 2>&1 &
        wait_for bqemulator "$bq_port" $!
    else
        echo "bqemulator is already up on 127.0.0.1:$bq_port"
    fi
}

case "${1:-all}" in
    install) install ;;
    start) start ;;
    all) install; start ;;
    *) echo "usage: $0 [install|start]" >&2; exit 2 ;;
esac
