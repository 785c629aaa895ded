#!/usr/bin/env bash
# Lays out the supervisor bundle (docs/supervisor-protocol.md, "The bundle"), called by the PublishBundle
# target of SandboxKit.Agent.csproj:
#   layout-bundle.sh BUNDLE_DIR PUBLISHED_AGENT BASH_STATIC LIB_DIR INTERPRETERS_DIR
# Idempotent and cheap, so the target runs on every build: a file whose content is already in place is left
# alone (its timestamp too). A changed file goes to a temporary name inside its bundle directory and is renamed
# into place: a container running the previous binary keeps it (no ETXTBSY, no torn file), and two builds laying
# out the same inputs at once cannot corrupt each other. BUILD = first 16 hex digits of sha256 over the other
# files, in this order: sandboxkit-agent, bin/bash, lib/prelude.sh, lib/prelude-nostate.sh,
# lib/interpreters/python_driver.py, lib/interpreters/node_driver.js, lib/interpreters/acorn.js.
set -euo pipefail
bundle=${1%/} agent=$2 bash_static=$3 lib=${4%/} interpreters=${5%/}
drivers=(python_driver.py node_driver.js acorn.js)
for f in "$agent" "$bash_static" "$lib/prelude.sh" "$lib/prelude-nostate.sh" "${drivers[@]/#/$interpreters/}"; do
    [[ -f $f ]] || { echo "layout-bundle: missing $f" >&2; exit 1; }
done
mkdir -p "$bundle/bin" "$bundle/lib/interpreters"
place() { # place SOURCE DEST MODE
    local tmp
    if cmp -s "$1" "$2" && [[ $(stat -c %a "$2") == "${3#0}" ]]; then
        return
    fi
    tmp=$(mktemp "$(dirname "$2")/.$(basename "$2").XXXXXX")
    cp "$1" "$tmp"
    chmod "$3" "$tmp"
    mv -f "$tmp" "$2"
}
place "$agent" "$bundle/sandboxkit-agent" 0755
place "$bash_static" "$bundle/bin/bash" 0755
place "$lib/prelude.sh" "$bundle/lib/prelude.sh" 0644
place "$lib/prelude-nostate.sh" "$bundle/lib/prelude-nostate.sh" 0644
for driver in "${drivers[@]}"; do
    # Read by the command user (contexts run as the user): world-readable, never writable.
    place "$interpreters/$driver" "$bundle/lib/interpreters/$driver" 0644
done
hash=$(cat "$bundle/sandboxkit-agent" "$bundle/bin/bash" "$bundle/lib/prelude.sh" "$bundle/lib/prelude-nostate.sh" \
    "${drivers[@]/#/$bundle/lib/interpreters/}" | sha256sum | cut -c1-16)
if [[ $(cat "$bundle/BUILD" 2>/dev/null) != "$hash" ]]; then
    tmp=$(mktemp "$bundle/.BUILD.XXXXXX")
    printf '%s\n' "$hash" > "$tmp"
    chmod 0644 "$tmp"
    mv -f "$tmp" "$bundle/BUILD"
    echo "sandboxkit-agent bundle $hash -> $bundle"
fi
