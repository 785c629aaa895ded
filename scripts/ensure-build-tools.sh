#!/usr/bin/env bash
# Make sure the host has what building and testing SandboxKit needs beyond the .NET SDK; on a Debian/Ubuntu
# host as root, install what is missing from the distribution's packages.
#
#   scripts/ensure-build-tools.sh            # build: clang + lld (NativeAOT supervisor), bash-static (its shell);
#                                            # run: e2fsprogs + util-linux (bounded session disks: mkfs.ext4, debugfs, losetup)
#   scripts/ensure-build-tools.sh --tests    # also what the test suite drives: Chromium (browser test), redis-server
#                                            # (cluster tests), iproute2 (private engines in network namespaces)
#
# Idempotent: with everything present it prints one line and installs nothing. Log: /var/log/sandboxkit-apt.log.
set -euo pipefail

APT_LOG=/var/log/sandboxkit-apt.log
say() { echo "tools: $*"; }
die() { echo "tools: $*" >&2; exit 1; }

want=(clang:clang lld:ld.lld bash-static:/bin/bash-static e2fsprogs:mkfs.ext4 e2fsprogs:debugfs util-linux:losetup)
if [[ "${1:-}" == "--tests" ]]; then
    want+=(chromium:chromium redis-server:redis-server iproute2:ip util-linux:nsenter)
fi

missing=()
for entry in "${want[@]}"; do
    package=${entry%%:*}
    probe=${entry#*:}
    if [[ "$probe" == /* ]]; then
        [[ -x "$probe" ]] || missing+=("$package")
    else
        command -v "$probe" >/dev/null 2>&1 || missing+=("$package")
    fi
done

mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u | sed '/^$/d')
if [[ ${#missing[@]} -eq 0 ]]; then
    say "ready"
    exit 0
fi
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    die "missing ${missing[*]}: install them (Debian/Ubuntu: apt-get install ${missing[*]}) or run this script as root"
fi
export DEBIAN_FRONTEND=noninteractive
say "installing ${missing[*]} (log: $APT_LOG)"
t0=$SECONDS
if ! apt-get install -y -q -o Dpkg::Use-Pty=0 --no-install-recommends "${missing[@]}" >>"$APT_LOG" 2>&1; then
    apt-get update -q >>"$APT_LOG" 2>&1 || true
    apt-get install -y -q -o Dpkg::Use-Pty=0 --no-install-recommends "${missing[@]}" >>"$APT_LOG" 2>&1 \
        || { tail -n 20 "$APT_LOG" >&2; die "apt-get install ${missing[*]} failed (see $APT_LOG)"; }
fi
say "installed in $((SECONDS - t0)) s"
