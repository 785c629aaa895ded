#!/usr/bin/env bash
# Brings up everything SandboxKit needs and runs the server in the foreground:
# the Docker engine (installed and started on Debian/Ubuntu as root when none answers), the sandbox
# image (built from Debian packages when no registry is reachable), a Release build, then the server.
#
#   ./quickstart.sh                                   # http://127.0.0.1:5000
#   ./quickstart.sh --urls http://127.0.0.1:8080      # another address (ASPNETCORE_URLS works too)
set -euo pipefail
cd "$(dirname "$0")"

# clang + lld build the NativeAOT supervisor; bash-static is the shell it brings to every image.
scripts/ensure-build-tools.sh
# The image script makes sure an engine answers first (scripts/ensure-engine.sh).
scripts/build-sandbox-image.sh

echo "build: dotnet build src/SandboxKit.Server -c Release"
build_log=$(mktemp)
if ! dotnet build src/SandboxKit.Server -c Release -nologo -v quiet >"$build_log" 2>&1; then
    echo "build: failed; last lines:" >&2
    tail -n 30 "$build_log" >&2
    exit 1
fi
rm -f "$build_log"

url="${ASPNETCORE_URLS:-http://127.0.0.1:5000}"
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[$i]}" in
        --urls) url="${args[$((i + 1))]:-$url}" ;;
        --urls=*) url="${args[$i]#--urls=}" ;;
    esac
done
first="${url%%;*}"
echo "server: starting on $first (Ctrl+C stops it)"
echo "server: try   curl -s $first/healthz"
echo "        and   curl -s -X POST $first/create_session"
exec dotnet src/SandboxKit.Server/bin/Release/net10.0/SandboxKit.Server.dll "$@"
