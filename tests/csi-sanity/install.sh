#!/usr/bin/env bash
# Builds csi-sanity (kubernetes-csi/csi-test) at a pinned version from the Go module proxy into
# the machine's tool cache (outside the clone) and prints the binary's path on stdout. Idempotent: when the binary there
# already is the pinned version (checked with `go version -m`), it is reused without building.
# Everything Go writes (GOPATH, GOMODCACHE, GOCACHE, GOBIN) stays under the cache dir.
#
#   tests/csi-sanity/install.sh            # prints e.g. /var/cache/kvmount/tools/csi-sanity/v5.6.0/bin/csi-sanity
#   CSI_SANITY_VERSION=v5.4.0 tests/csi-sanity/install.sh
#   KVMOUNT_TOOLS=/elsewhere tests/csi-sanity/install.sh
set -euo pipefail

version=${CSI_SANITY_VERSION:-v5.6.0}
module=github.com/kubernetes-csi/csi-test/v5
root=$(cd "$(dirname "$0")/../.." && pwd)
# Per machine, outside any clone, so every clone (and CI's fresh one) reuses the build.
tools=${KVMOUNT_TOOLS:-/var/cache/kvmount/tools}
dir=$tools/csi-sanity/$version
bin=$dir/bin/csi-sanity

if ! command -v go >/dev/null 2>&1; then
    echo "csi-sanity install: needs Go (go.mod of $module@$version says which version)" >&2
    exit 1
fi

is_pinned() {
    [ -x "$bin" ] && go version -m "$bin" 2>/dev/null \
        | awk -v m="$module" -v v="$version" '$1 == "mod" && $2 == m && $3 == v {ok = 1} END {exit !ok}'
}

if ! is_pinned; then
    echo "csi-sanity install: building $module/cmd/csi-sanity@$version with $(go env GOVERSION) into $dir/bin" >&2
    mkdir -p "$dir/bin" "$tools/go/path" "$tools/go/cache"
    start=$(date +%s)
    # GOTOOLCHAIN=local: fail with a clear message rather than download a newer Go.
    # GOFLAGS=-modcacherw: the module cache can be removed with rm -rf.
    env GOBIN="$dir/bin" \
        GOPATH="$tools/go/path" \
        GOMODCACHE="$tools/go/path/pkg/mod" \
        GOCACHE="$tools/go/cache" \
        GOTOOLCHAIN=local \
        GOFLAGS=-modcacherw \
        CGO_ENABLED=0 \
        go install -ldflags "-X main.VERSION=$version" "$module/cmd/csi-sanity@$version" >&2
    is_pinned || { echo "csi-sanity install: $bin is not $module $version after the build" >&2; exit 1; }
    echo "csi-sanity install: built in $(($(date +%s) - start))s" >&2
fi
echo "$bin"
