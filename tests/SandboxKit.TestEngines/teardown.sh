#!/bin/sh
# Removes every trace of one private Docker engine of SandboxKit.TestEngines.
#
# The single teardown implementation: PrivateEngine.DisposeAsync runs it (after removing containers through the
# API), the sweep runs it for engines whose owner died, and the watchdog runs it when the owning test process dies
# without disposing. It is idempotent and safe on any partial state: every step checks what exists first.
#
# Usage: teardown.sh ID DATA_ROOT RUN_DIR NETNS HOST_VETH CGROUP [FILES_TO_REMOVE...]
# Exit status: 0 when nothing is left, 1 when something survived (named on stderr), 2 on bad arguments.
set -u

[ $# -ge 6 ] || { echo "usage: teardown.sh ID DATA_ROOT RUN_DIR NETNS HOST_VETH CGROUP [FILES...]" >&2; exit 2; }
id=$1 data=$2 run=$3 netns=$4 veth=$5 cgroup=$6
shift 6

# Never act on anything that is not named after the engine id: a wrong argument must not become rm -rf /.
case "$id" in skte[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]) ;; *) echo "refusing: bad id '$id'" >&2; exit 2 ;; esac
case "$data" in /?*/"$id") ;; *) echo "refusing: data root '$data' is not named after $id" >&2; exit 2 ;; esac
case "$run" in /?*/"$id") ;; *) echo "refusing: run dir '$run' is not named after $id" >&2; exit 2 ;; esac
[ "$netns" = "$id" ] && [ "$cgroup" = "$id" ] || { echo "refusing: netns/cgroup must be $id" >&2; exit 2; }
case "$veth" in "$id"?) ;; *) echo "refusing: veth '$veth' is not named after $id" >&2; exit 2 ;; esac

failed=0

# 1. Processes: dockerd, its containerd, the shims and every container process live in the engine's cgroup tree
#    (pids controller on cgroup v1, the unified tree on v2); anything else inside the engine's network namespace is
#    killed too. Zombies are already dead and only wait for their parent to reap them: skip them.
engine_pids() {
    for tree in "/sys/fs/cgroup/pids/$cgroup" "/sys/fs/cgroup/$cgroup"; do
        [ -d "$tree" ] || continue
        find "$tree" -name cgroup.procs -exec cat {} + 2>/dev/null
    done
    [ -e "/run/netns/$netns" ] && ip netns pids "$netns" 2>/dev/null
}
live_pids() {
    for p in $(engine_pids | sort -u); do
        state=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | cut -d' ' -f1)
        [ -n "$state" ] && [ "$state" != Z ] && echo "$p"
    done
}
rounds=0
while pids=$(live_pids) && [ -n "$pids" ]; do
    rounds=$((rounds + 1))
    if [ $rounds -gt 200 ]; then echo "processes survive: $pids" >&2; failed=1; break; fi
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null
    sleep 0.05
done

# 2. Shim sockets live outside the engine's directories (/run/containerd/s/<hash>); a killed shim leaves its socket.
for address in "$run"/exec/containerd/daemon/io.containerd.runtime.v2.task/*/*/address; do
    [ -f "$address" ] || continue
    socket=$(sed -n 's#^unix://##p' "$address")
    case "$socket" in /run/containerd/s/?*) rm -f -- "$socket" ;; esac
done

# 3. Mounts under the engine's directories (the data root bound on itself, overlay merged dirs, container shm,
#    libnetwork's namespace files), deepest first; a lazy unmount only if the plain one fails.
mounts_under() {
    awk -v a="$data" -v b="$run" '{ m = $5; if (m == a || index(m, a "/") == 1 || m == b || index(m, b "/") == 1) print m }' \
        /proc/self/mountinfo | sort -r
}
rounds=0
while mounts=$(mounts_under) && [ -n "$mounts" ]; do
    rounds=$((rounds + 1))
    if [ $rounds -gt 10 ]; then echo "mounts survive: $mounts" >&2; failed=1; break; fi
    for m in $mounts; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; done
done

# 4. Network: the host end of the veth pair (its peer goes with it) and the namespace.
[ -e "/sys/class/net/$veth" ] && { ip link del "$veth" 2>/dev/null || { echo "link survives: $veth" >&2; failed=1; }; }
[ -e "/run/netns/$netns" ] && { ip netns del "$netns" 2>/dev/null || { echo "netns survives: $netns" >&2; failed=1; }; }

# 5. Directories, only once nothing is mounted below them, and never across a file system boundary.
if [ -z "$(mounts_under)" ]; then
    rm -rf --one-file-system -- "$data" "$run" || failed=1
else
    echo "not removing $data $run: mounts remain" >&2
    failed=1
fi

# 6. Cgroups of every hierarchy (v1 controllers, the named systemd one, the unified one), children first.
for tree in /sys/fs/cgroup/*/"$cgroup" "/sys/fs/cgroup/$cgroup"; do
    [ -d "$tree" ] || continue
    find "$tree" -depth -type d -exec rmdir {} \; 2>/dev/null
    [ -d "$tree" ] && { echo "cgroup survives: $tree" >&2; failed=1; }
done

# 7. Bookkeeping files the caller names (lease, watchdog pid file): last, so a half-done teardown is found again.
if [ $failed -eq 0 ]; then
    for f in "$@"; do rm -f -- "$f"; done
fi
exit $failed
