#!/usr/bin/env bash
# Runs every test of SandboxKit against a real Docker engine and the real sandbox image.
# Sets up what is missing first (engine, image), so on a fresh Debian/Ubuntu machine with the
# .NET SDK this one command is all that is needed. CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")"

scripts/ensure-engine.sh
scripts/build-sandbox-image.sh

results=$(mktemp -d)
trap 'rm -rf "$results"' EXIT
status=0
dotnet test SandboxKit.sln -c Release --logger "trx" --results-directory "$results" \
    --logger "console;verbosity=normal" || status=$?

# One plain summary line over every test assembly, from the TRX files.
passed=0 failed=0 skipped=0
for trx in "$results"/*.trx; do
    [[ -e "$trx" ]] || continue
    counters=$(grep -o '<Counters [^>]*>' "$trx" | head -n 1)
    get() { sed -n "s/.* $1=\"\([0-9]*\)\".*/\1/p" <<<"$counters"; }
    passed=$((passed + $(get passed)))
    failed=$((failed + $(get failed) + $(get error) + $(get timeout) + $(get aborted)))
    skipped=$((skipped + $(get notExecuted)))
done
echo "tests: $passed passed, $failed failed, $skipped skipped"
if [[ $status -ne 0 || $failed -ne 0 || $passed -eq 0 ]]; then
    exit 1
fi
