#!/usr/bin/env bash
# Runs every test of SandboxKit against a real Docker engine and the real sandbox image:
#   1. the .NET test projects (server, supervisor, client, integrations) — real engine, real containers;
#   2. the packages as users consume them (local NuGet feed) and every sample, against a real server.
# Sets up what is missing first (build tools, engine, image), so on a fresh Debian/Ubuntu machine with the
# .NET SDK this one command is all that is needed. CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")"

# clang + lld (the NativeAOT supervisor), bash-static (its shell) and what the tests drive.
scripts/ensure-build-tools.sh --tests
# The image script makes sure an engine answers first (scripts/ensure-engine.sh).
scripts/build-sandbox-image.sh

results=$(mktemp -d)
trap 'rm -rf "$results"' EXIT
passed=0 failed=0 skipped=0 status=0

echo "== .NET tests"
dotnet test SandboxKit.sln -c Release --logger "trx" --results-directory "$results" \
    --logger "console;verbosity=normal" || status=1
for trx in "$results"/*.trx; do
    [[ -e "$trx" ]] || continue
    counters=$(grep -o '<Counters [^>]*>' "$trx" | head -n 1)
    get() { sed -n "s/.* $1=\"\([0-9]*\)\".*/\1/p" <<<"$counters"; }
    passed=$((passed + $(get passed)))
    failed=$((failed + $(get failed) + $(get error) + $(get timeout) + $(get aborted)))
    skipped=$((skipped + $(get notExecuted)))
done

echo "== packages and samples"
smoke_log="$results/smoke.log"
scripts/smoke-test-packages-and-samples.sh 2>&1 | tee "$smoke_log" || status=1
smoke=$(grep -o 'smoke: [0-9]* passed, [0-9]* failed' "$smoke_log" | tail -n 1)
passed=$((passed + $(sed -n 's/smoke: \([0-9]*\) passed.*/\1/p' <<<"$smoke")))
failed=$((failed + $(sed -n 's/.* \([0-9]*\) failed/\1/p' <<<"$smoke")))

echo "tests: $passed passed, $failed failed, $skipped skipped"
if [[ $status -ne 0 || $failed -ne 0 || $passed -eq 0 ]]; then
    exit 1
fi
