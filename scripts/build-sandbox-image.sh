#!/usr/bin/env bash
# Build the sandbox image (Dockerfile.sandbox) if its inputs changed.
#
#   scripts/build-sandbox-image.sh
#
# Tag:   sandboxkit/sandbox:$(cat VERSION), or $SANDBOXKIT_IMAGE.
# Label: org.sandboxkit.inputs = first 16 hex chars of
#        sha256(cat Dockerfile.sandbox sandbox/packages.txt)
#        (the bytes of the two files, concatenated in that order). An image whose label
#        matches is up to date and nothing is done.
# Base:  1. $SANDBOXKIT_BASE_IMAGE, or debian:bookworm-slim if it exists locally;
#        2. else, on a Debian/Ubuntu host as root: a base made with debootstrap from the host's
#           Debian mirror ($SANDBOXKIT_DEBIAN_MIRROR overrides) and `docker import`ed as
#           sandboxkit/base:bookworm-<hash of the package list>; no registry is contacted;
#        3. else (e.g. Docker Desktop): a plain build that pulls debian:bookworm-slim.
# Builds use the classic builder (DOCKER_BUILDKIT=0; no buildx needed) with --network host.
# Older sandboxkit/base tags are removed after a build that made or used a newer one.
# Log: /var/log/sandboxkit-image-build.log, rewritten per build (/tmp/... when /var/log is not writable).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

say() { echo "image: $*"; }
die() { echo "image: $*" >&2; exit 1; }

LOG=/var/log/sandboxkit-image-build.log
if ! { : >>"$LOG"; } 2>/dev/null; then
    LOG=/tmp/sandboxkit-image-build.log
fi
run_logged() { # run_logged <what> <cmd...>: output to $LOG, tail on failure
    local what=$1; shift
    echo "=== $(date -u +%FT%TZ) $what: $*" >>"$LOG"
    if ! "$@" >>"$LOG" 2>&1; then
        echo "image: $what failed; last lines of $LOG:" >&2
        tail -n 25 "$LOG" >&2
        exit 1
    fi
}

"$ROOT/scripts/ensure-engine.sh"

for f in Dockerfile.sandbox sandbox/packages.txt VERSION; do
    [[ -f "$f" ]] || die "missing $ROOT/$f"
done

TAG=${SANDBOXKIT_IMAGE:-sandboxkit/sandbox:$(tr -d '[:space:]' <VERSION)}
HASH=$(cat Dockerfile.sandbox sandbox/packages.txt | sha256sum | cut -c1-16)

current=$(docker image inspect --format '{{ index .Config.Labels "org.sandboxkit.inputs" }}' "$TAG" 2>/dev/null || true)
old_id=$(docker image inspect --format '{{.Id}}' "$TAG" 2>/dev/null || true)
if [[ "$current" == "$HASH" ]]; then
    say "$TAG is up to date"
    exit 0
fi
say "building $TAG (inputs $HASH${current:+, image has $current})"
: >"$LOG" # one build per log
t_all=$SECONDS

# Package names from sandbox/packages.txt above its [apt] line (debootstrap's part), comments and blanks dropped;
# Dockerfile.sandbox installs the rest with apt.
PACKAGES=$(sed -e '/^\[apt\]$/,$d' -e 's/#.*//' sandbox/packages.txt | tr -s ' \t\r\n' '\n' | sed '/^$/d')
[[ -n "$PACKAGES" ]] || die "sandbox/packages.txt lists no packages"

# First http(s) Debian URI of the host's apt sources, skipping security suites.
host_debian_mirror() {
    local uri
    uri=$( {
        if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
            sed -n 's/^[[:space:]]*URIs:[[:space:]]*//p' /etc/apt/sources.list.d/debian.sources | tr ' ' '\n'
        fi
        if [[ -f /etc/apt/sources.list ]]; then
            sed -e 's/\[[^]]*\]//' /etc/apt/sources.list | awk '$1 == "deb" {print $2}'
        fi
    } | grep -E '^https?://' | grep -v -e security -e ubuntu | head -n 1 || true)
    echo "${uri:-http://deb.debian.org/debian}"
}

BUILD_ARGS=(--network host -f Dockerfile.sandbox --build-arg "INPUTS_HASH=$HASH" -t "$TAG")
BASE=""
if [[ -n "${SANDBOXKIT_BASE_IMAGE:-}" ]]; then
    BASE=$SANDBOXKIT_BASE_IMAGE
    say "base $BASE (SANDBOXKIT_BASE_IMAGE)"
elif docker image inspect debian:bookworm-slim >/dev/null 2>&1; then
    BASE=debian:bookworm-slim
    say "base $BASE (local)"
elif [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    if ! command -v debootstrap >/dev/null 2>&1; then
        say "installing debootstrap"
        export DEBIAN_FRONTEND=noninteractive
        { apt-get install -y -q --no-install-recommends debootstrap \
            || { apt-get update -q && apt-get install -y -q --no-install-recommends debootstrap; }; } >>"$LOG" 2>&1 || true
    fi
    command -v debootstrap >/dev/null 2>&1 || die "debootstrap is needed to make a base image offline; apt-get install debootstrap"
    PKG_LIST=$(paste -sd, <<<"$PACKAGES")
    BASE_RECIPE=2 # bump when the rootfs recipe below changes, so a new base tag is made
    BASE="sandboxkit/base:bookworm-$(printf '%s %s' "$BASE_RECIPE" "$PKG_LIST" | sha256sum | cut -c1-12)"
    if docker image inspect "$BASE" >/dev/null 2>&1; then
        say "base $BASE (exists)"
    else
        MIRROR=${SANDBOXKIT_DEBIAN_MIRROR:-$(host_debian_mirror)}
        ROOTFS=$(mktemp -d /var/tmp/sandboxkit-rootfs.XXXXXX)
        cleanup_rootfs() {
            [[ -n "${ROOTFS:-}" && -d "$ROOTFS" ]] || return 0
            # debootstrap may leave proc/sys/dev mounts behind when it fails: unmount first,
            # and never let rm cross into another file system.
            awk -v r="$ROOTFS" 'index($2, r "/") == 1 {print $2}' /proc/mounts | sort -r \
                | while read -r m; do umount -l "$m" 2>/dev/null || true; done
            rm -rf --one-file-system "$ROOTFS"
        }
        trap cleanup_rootfs EXIT
        trap 'exit 130' INT TERM
        say "debootstrap bookworm from $MIRROR ($(wc -l <<<"$PACKAGES") packages, log: $LOG)"
        t0=$SECONDS
        run_logged debootstrap debootstrap --variant=minbase --include="$PKG_LIST" bookworm "$ROOTFS" "$MIRROR"
        # Shrink like debian:bookworm-slim: no apt lists/caches, docs (copyright kept), man pages
        # or translations, and a dpkg config that keeps later installs from adding them back.
        rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/cache/apt/archives/*.deb \
            "$ROOTFS"/var/log/bootstrap.log "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
            "$ROOTFS"/usr/share/locale/* "$ROOTFS"/usr/share/lintian/*
        find "$ROOTFS"/usr/share/doc -mindepth 1 ! -type d ! -name copyright -delete
        find "$ROOTFS"/usr/share/doc -mindepth 1 -type d -empty -delete
        printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
            'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' \
            'path-exclude /usr/share/locale/*' 'path-exclude /usr/share/lintian/*' \
            >"$ROOTFS"/etc/dpkg/dpkg.cfg.d/sandboxkit-slim
        say "debootstrap done in $((SECONDS - t0)) s ($(du -sh --one-file-system "$ROOTFS" | cut -f1))"
        t0=$SECONDS
        # shellcheck disable=SC2016 # $1/$2 are expanded by the inner bash
        run_logged "docker import" bash -c 'set -o pipefail; tar --numeric-owner -C "$1" -c . | docker import - "$2"' \
            _ "$ROOTFS" "$BASE"
        cleanup_rootfs
        trap - EXIT INT TERM
        say "imported $BASE in $((SECONDS - t0)) s"
    fi
else
    say "no local base image and no debootstrap here: building from debian:bookworm-slim (pulls it)"
fi
[[ -n "$BASE" ]] && BUILD_ARGS+=(--build-arg "BASE_IMAGE=$BASE")

t0=$SECONDS
run_logged "docker build" env DOCKER_BUILDKIT=0 docker build "${BUILD_ARGS[@]}" .
say "built $TAG in $((SECONDS - t0)) s ($(docker image inspect --format '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}'))"
# Drop the image this build superseded if nothing else names it (fails harmlessly if a
# container still uses it).
if [[ -n "$old_id" && "$old_id" != "$(docker image inspect --format '{{.Id}}' "$TAG")" ]] \
    && [[ "$(docker image inspect --format '{{len .RepoTags}}' "$old_id" 2>/dev/null)" == 0 ]]; then
    docker rmi "$old_id" >/dev/null 2>&1 || true
fi
# Bases made for earlier package lists are 300+ MB each and nothing rebuilds from them:
# untag them (an image or container still built on one keeps its layers).
if [[ "$BASE" == sandboxkit/base:* ]]; then
    for stale in $(docker image ls --format '{{.Repository}}:{{.Tag}}' sandboxkit/base | grep -vxF "$BASE"); do
        if docker rmi "$stale" >/dev/null 2>&1; then
            say "removed superseded base $stale"
        fi
    done
fi
say "done in $((SECONDS - t_all)) s"
