#!/usr/bin/env bash
# Proves SandboxKit works as users consume it: packs the NuGet packages into a local folder feed,
# builds a fresh copy of samples/BasicUsage against the *packages* (not the projects), starts the real
# server, and runs that program and every other sample against it. Prints "N passed, N failed".
#   scripts/smoke-test-packages-and-samples.sh            (called by test.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(tr -d '[:space:]' < VERSION)
work=$(mktemp -d)
server_pid=""
instance="smoke$$"
cleanup() {
    if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

log="$work/log"
run() { # run <label> <command...>: quiet on success, log tail on failure
    local label=$1; shift
    if ! "$@" >"$log" 2>&1; then
        echo "smoke: $label failed:" >&2
        tail -n 40 "$log" >&2
        return 1
    fi
}

echo "smoke: packing SandboxKit $version into a local feed"
for project in src/SandboxKit.Contracts src/SandboxKit.Client; do
    run pack dotnet pack "$project" -c Release -o "$work/feed" -nologo
done
[[ -n "$(ls "$work"/feed/SandboxKit.Client."$version".nupkg "$work"/feed/SandboxKit.Client."$version".snupkg 2>/dev/null)" ]]

# A new console app outside the repository (no Directory.*.props), exactly as a user would write it.
mkdir -p "$work/app"
cp samples/BasicUsage/Program.cs "$work/app/Program.cs"
cat > "$work/app/App.csproj" <<XML
<Project Sdk="Microsoft.NET.Sdk">
  <PropertyGroup>
    <OutputType>Exe</OutputType>
    <TargetFramework>net10.0</TargetFramework>
    <Nullable>enable</Nullable>
    <ImplicitUsings>enable</ImplicitUsings>
    <RestoreAdditionalProjectSources>$work/feed</RestoreAdditionalProjectSources>
    <RestorePackagesPath>$work/packages</RestorePackagesPath>
  </PropertyGroup>
  <ItemGroup>
    <PackageReference Include="SandboxKit.Client" Version="$version" />
  </ItemGroup>
</Project>
XML
echo "smoke: building a new app against the SandboxKit.Client $version package"
run build-app dotnet build "$work/app" -c Release -nologo

echo "smoke: starting the server"
run build-server dotnet build src/SandboxKit.Server -c Release -nologo
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo 5123)
url="http://127.0.0.1:$port"
dotnet src/SandboxKit.Server/bin/Release/net10.0/SandboxKit.Server.dll --urls "$url" \
    --Sandbox:InstanceName="$instance" --Sandbox:WarmPoolSize=1 >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do
    # The port answering is enough: each program below checks the server itself. (No curl needed.)
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    kill -0 "$server_pid" 2>/dev/null || { echo "smoke: server exited:" >&2; tail -n 20 "$work/server.log" >&2; exit 1; }
    sleep 0.2
done

passed=0 failed=0
check() { # check <name> <command...>
    local name=$1; shift
    if "$@" >"$work/$name.out" 2>&1; then
        passed=$((passed + 1)); echo "smoke: PASS $name"
        sed 's/^/    /' "$work/$name.out" | head -n 12
    else
        failed=$((failed + 1)); echo "smoke: FAIL $name"
        sed 's/^/    /' "$work/$name.out" | tail -n 30
    fi
}
check packaged-basic-usage dotnet "$work/app/bin/Release/net10.0/App.dll" "$url"
for sample in samples/*/; do
    name=$(basename "$sample")
    [[ -f "$sample/$name.csproj" ]] || continue
    check "sample-$name" dotnet run --project "$sample" -c Release -- "$url"
done

kill -TERM "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""
left=$(docker ps -aq --filter "label=org.sandboxkit.instance=$instance" | wc -l)
if [[ "$left" -ne 0 ]]; then
    failed=$((failed + 1)); echo "smoke: FAIL $left containers left behind by the samples"
    docker ps -aq --filter "label=org.sandboxkit.instance=$instance" | xargs -r docker rm -f >/dev/null
fi
docker volume ls -q --filter "label=org.sandboxkit.instance=$instance" | grep -v '^sk-user-' | xargs -r docker volume rm -f >/dev/null || true
echo "smoke: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
