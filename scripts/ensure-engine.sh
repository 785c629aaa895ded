#!/usr/bin/env bash
# Make sure a Docker engine answers; on a Debian/Ubuntu host as root, install and start one.
#
#   scripts/ensure-engine.sh
#
# Idempotent: when `docker info` already answers it prints one line and does nothing else.
# Otherwise, as root with apt-get, it installs what is missing (docker.io, debootstrap for
# scripts/build-sandbox-image.sh, and runsc/gVisor when apt offers it), registers runsc in
# /etc/docker/daemon.json (merged with jq, other keys kept) and starts dockerd in the background.
#
# Logs: /var/log/sandboxkit-apt.log (apt-get), /var/log/sandboxkit-dockerd.log (dockerd).
# Note: if daemon.json changes while a dockerd is already running, dockerd is sent SIGHUP,
# which reloads the "runtimes" section without a restart.
set -euo pipefail

APT_LOG=/var/log/sandboxkit-apt.log
DOCKERD_LOG=/var/log/sandboxkit-dockerd.log
DAEMON_JSON=/etc/docker/daemon.json
WAIT_SECONDS=60

say() { echo "engine: $*"; }
die() { echo "engine: $*" >&2; exit 1; }

# Prints the server version and returns 0 when an engine answers.
engine_version() {
    command -v docker >/dev/null 2>&1 || return 1
    timeout 10 docker info --format '{{.ServerVersion}}' 2>/dev/null
}

if v=$(engine_version) && [[ -n "$v" ]]; then
    say "ready ($v)"
    exit 0
fi

# A DOCKER_HOST pointing elsewhere cannot be fixed by starting a local dockerd.
if [[ -n "${DOCKER_HOST:-}" && "${DOCKER_HOST}" != "unix:///var/run/docker.sock" ]]; then
    die "DOCKER_HOST=${DOCKER_HOST} does not answer 'docker info'; start that engine or unset DOCKER_HOST"
fi

if [[ $(id -u) -ne 0 ]]; then
    die "no Docker engine answers: install docker.io and start dockerd (or add $(id -un) to the docker group), or run this script as root"
fi
if ! command -v apt-get >/dev/null 2>&1; then
    die "no Docker engine answers and this is not a Debian/Ubuntu host: install Docker Engine (dockerd) and start it, then re-run"
fi

# ---- packages ---------------------------------------------------------------------------
export DEBIAN_FRONTEND=noninteractive
apt_updated=0
apt_run() { # apt_run <args...>: quiet, logged, tail on failure
    if ! apt-get -y -q -o Dpkg::Use-Pty=0 "$@" >>"$APT_LOG" 2>&1; then
        echo "engine: apt-get $* failed; last lines of $APT_LOG:" >&2
        tail -n 20 "$APT_LOG" >&2
        exit 1
    fi
}
apt_update_once() {
    if [[ $apt_updated -eq 0 ]]; then
        local t=$SECONDS
        apt_run update
        say "apt-get update done in $((SECONDS - t)) s"
        apt_updated=1
    fi
}
has_candidate() { # has_candidate <pkg>: apt knows an installable version
    local c
    c=$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2; exit}')
    [[ -n "$c" && "$c" != "(none)" ]]
}

missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)     # a docker client may exist without an engine
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if [[ ${#missing[@]} -gt 0 ]]; then
    apt_update_once
fi
want_runsc=0
if command -v runsc >/dev/null 2>&1; then
    want_runsc=1
elif has_candidate runsc; then
    missing+=(runsc)
    want_runsc=1
fi
if [[ $want_runsc -eq 1 ]] && ! command -v jq >/dev/null 2>&1; then
    missing+=(jq)
fi
if [[ ${#missing[@]} -gt 0 ]]; then
    apt_update_once
    say "installing ${missing[*]} (log: $APT_LOG)"
    t0=$SECONDS
    apt_run install --no-install-recommends "${missing[@]}"
    say "installed in $((SECONDS - t0)) s"
fi
command -v dockerd >/dev/null 2>&1 || die "dockerd still not found after installing docker.io (see $APT_LOG)"

# ---- gVisor runtime registration ----------------------------------------------------------
config_changed=0
if [[ $want_runsc -eq 1 ]] && command -v runsc >/dev/null 2>&1; then
    runsc_path=$(command -v runsc)
    mkdir -p "$(dirname "$DAEMON_JSON")"
    current='{}'
    if [[ -s "$DAEMON_JSON" ]]; then
        jq -e 'type == "object"' "$DAEMON_JSON" >/dev/null 2>&1 \
            || die "$DAEMON_JSON is not a JSON object; fix it and re-run"
        current=$(jq -S . "$DAEMON_JSON")
    fi
    wanted=$(jq -S --arg p "$runsc_path" \
        '.runtimes.runsc = {"path": $p, "runtimeArgs": ["--network=none"]}' <<<"$current")
    if [[ "$wanted" != "$current" ]]; then
        tmp=$(mktemp "$DAEMON_JSON.XXXXXX")
        printf '%s\n' "$wanted" >"$tmp"
        chmod 0644 "$tmp"
        mv -f "$tmp" "$DAEMON_JSON"
        config_changed=1
        say "registered runtime runsc ($runsc_path, --network=none) in $DAEMON_JSON"
    fi
fi

# ---- start dockerd -----------------------------------------------------------------------
if pid=$(pgrep -x dockerd | head -n 1) && [[ -n "$pid" ]]; then
    say "dockerd already running (pid $pid), waiting for it"
    if [[ $config_changed -eq 1 ]]; then
        kill -HUP "$pid" 2>/dev/null || true
        say "sent SIGHUP to dockerd to reload $DAEMON_JSON"
    fi
else
    say "starting dockerd (log: $DOCKERD_LOG)"
    setsid nohup dockerd </dev/null >>"$DOCKERD_LOG" 2>&1 &
    dockerd_pid=$!
fi

t0=$SECONDS
while (( SECONDS - t0 < WAIT_SECONDS )); do
    if v=$(engine_version) && [[ -n "$v" ]]; then
        say "ready ($v) after $((SECONDS - t0)) s"
        exit 0
    fi
    if [[ -n "${dockerd_pid:-}" ]] && ! kill -0 "$dockerd_pid" 2>/dev/null; then
        break # it died: no point waiting
    fi
    sleep 1
done
echo "engine: dockerd did not answer within ${WAIT_SECONDS} s; last lines of $DOCKERD_LOG:" >&2
tail -n 20 "$DOCKERD_LOG" >&2 || true
exit 1
