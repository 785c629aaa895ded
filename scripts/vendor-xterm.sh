#!/usr/bin/env bash
# Vendor xterm.js and its fit addon for the web terminal (src/SandboxKit.Server/Web/terminal/).
#
#   scripts/vendor-xterm.sh
#
# Fetches the two npm packages below with `npm pack` (registry access needed only here: the build
# and CI use the files committed in src/SandboxKit.Server/Web/vendor/xterm/), checks each tarball
# against the registry's sha512 integrity, and copies the files a plain <script>/<link> tag needs
# (UMD builds, the stylesheet) plus each package's LICENSE, byte for byte. VERSIONS.txt records
# what was taken and the files' sha256s.
#
# Idempotent: a second run with the same versions rewrites identical files (VERSIONS.txt holds no
# dates), so `git status` stays clean. To upgrade, change the versions here and run it again.
set -euo pipefail

XTERM_VERSION=6.0.0
FIT_VERSION=0.11.0

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEST="$ROOT/src/SandboxKit.Server/Web/vendor/xterm"

say() { echo "vendor-xterm: $*"; }
die() { echo "vendor-xterm: $*" >&2; exit 1; }

command -v npm >/dev/null 2>&1 || die "npm is required (apt-get install npm)"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# Prints the sha512 integrity string (sha512-<base64>) of a file, the form npm's dist.integrity uses.
integrity_of() { printf 'sha512-%s' "$(openssl dgst -sha512 -binary "$1" | base64 -w0)"; }

# fetch <package> <version>: packs and unpacks the package into $WORK/<package basename>/ and
# prints the registry's integrity after checking the tarball against it.
fetch() {
    local package=$1 version=$2 name expected tarball actual
    name=${package##*/}
    expected=$(npm view "$package@$version" dist.integrity 2>/dev/null) \
        || die "$package@$version is not in the registry"
    [[ $expected == sha512-* ]] || die "$package@$version has no sha512 integrity (got '$expected')"
    tarball=$(cd "$WORK" && npm pack --silent "$package@$version" | tail -n1)
    actual=$(integrity_of "$WORK/$tarball")
    [[ $actual == "$expected" ]] || die "$package@$version: tarball integrity $actual does not match the registry's $expected"
    mkdir -p "$WORK/$name"
    tar -xzf "$WORK/$tarball" -C "$WORK/$name"
    printf '%s' "$expected"
}

XTERM_INTEGRITY=$(fetch @xterm/xterm "$XTERM_VERSION")
FIT_INTEGRITY=$(fetch @xterm/addon-fit "$FIT_VERSION")

XTERM_PKG="$WORK/xterm/package"
FIT_PKG="$WORK/addon-fit/package"
# The UMD builds define window.Terminal and window.FitAddon from a classic <script> tag; the .mjs
# builds would need an import map or a bundler.
for f in "$XTERM_PKG/lib/xterm.js" "$XTERM_PKG/css/xterm.css" "$XTERM_PKG/LICENSE" "$FIT_PKG/lib/addon-fit.js" "$FIT_PKG/LICENSE"; do
    [[ -f $f ]] || die "expected file missing from the package: ${f#"$WORK"/}"
done

mkdir -p "$DEST"
# Only what this script writes lives here: remove leftovers of an earlier layout or version.
find "$DEST" -mindepth 1 -maxdepth 1 ! -name xterm.js ! -name xterm.css ! -name addon-fit.js \
    ! -name LICENSE.xterm ! -name LICENSE.addon-fit ! -name VERSIONS.txt -exec rm -rf {} +
install -m 0644 "$XTERM_PKG/lib/xterm.js" "$DEST/xterm.js"
install -m 0644 "$XTERM_PKG/css/xterm.css" "$DEST/xterm.css"
install -m 0644 "$XTERM_PKG/LICENSE" "$DEST/LICENSE.xterm"
install -m 0644 "$FIT_PKG/lib/addon-fit.js" "$DEST/addon-fit.js"
install -m 0644 "$FIT_PKG/LICENSE" "$DEST/LICENSE.addon-fit"

{
    echo "# Written by scripts/vendor-xterm.sh; do not edit by hand. Files are byte-identical to the packages'."
    echo "# package version integrity (npm dist.integrity of the tarball)"
    echo "@xterm/xterm $XTERM_VERSION $XTERM_INTEGRITY"
    echo "@xterm/addon-fit $FIT_VERSION $FIT_INTEGRITY"
    echo "# sha256 file (from package path)"
    for pair in xterm.js:@xterm/xterm/lib/xterm.js xterm.css:@xterm/xterm/css/xterm.css LICENSE.xterm:@xterm/xterm/LICENSE \
                addon-fit.js:@xterm/addon-fit/lib/addon-fit.js LICENSE.addon-fit:@xterm/addon-fit/LICENSE; do
        file=${pair%%:*}
        printf '%s  %s (%s)\n' "$(sha256sum "$DEST/$file" | cut -d' ' -f1)" "$file" "${pair#*:}"
    done
} >"$DEST/VERSIONS.txt"

say "@xterm/xterm $XTERM_VERSION and @xterm/addon-fit $FIT_VERSION in ${DEST#"$ROOT"/}"
