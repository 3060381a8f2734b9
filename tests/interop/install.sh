#!/usr/bin/env bash
# Builds the interop clients (tests/interop/*/, one Go module each, pinned by their go.mod and
# go.sum) into a cache outside the clone, and prints one `VAR=path` line per binary on stdout,
# the environment tests/python/test_interop_clients.py reads:
#
#   KVMOUNT_DRIVER_CLIENT_V1_5_4   the Secrets Store CSI Driver v1.5.4's provider client
#   KVMOUNT_DRIVER_CLIENT_V1_6_0   the Secrets Store CSI Driver v1.6.0's provider client
#   KVMOUNT_CSI_CLIENT             a CSI client with kubelet 1.34's grpc-go and CSI spec
#
# Each binary lives in ${KVMOUNT_TOOLS:-/var/cache/kvmount/tools}/interop/<name>-<hash>/, the
# hash covering the module's sources (and the mlog stand-in the driver modules replace
# monis.app/mlog with) and the Go version: a clone at the same sources reuses it without
# building, and an edit builds a new one. Everything Go writes stays under the cache dir: the
# module cache (GOPATH, GOMODCACHE: about 600 MB, the layout tests/csi-sanity/install.sh uses)
# is kept, the build cache (GOCACHE, larger) only while this script runs.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
tools=${KVMOUNT_TOOLS:-/var/cache/kvmount/tools}

if ! command -v go >/dev/null 2>&1; then
    echo "interop install: needs Go >= 1.25.9 (driver v1.6.0's go.mod)" >&2
    exit 1
fi
goversion=$(go env GOVERSION)
mkdir -p "$tools/interop" "$tools/go/path"
gocache=$(mktemp -d "$tools/interop/gocache.XXXXXX")
trap 'rm -rf "$gocache"' EXIT

# The sources a binary is built from, as a hash.
sources_hash() {
    (cd "$here" && find "$@" -type f \( -name '*.go' -o -name go.mod -o -name go.sum \) | LC_ALL=C sort \
        | xargs sha256sum; echo "$goversion") | sha256sum | cut -c1-16
}

# build VAR MODULE_DIR [EXTRA_SOURCE_DIR...]: builds MODULE_DIR's main package unless the
# keyed binary exists, and prints VAR=path.
build() {
    local var=$1 module=$2
    local dir=$tools/interop/$module-$(sources_hash "${@:2}")
    local bin=$dir/$module
    if [ ! -x "$bin" ]; then
        echo "interop install: building tests/interop/$module with $goversion into $dir" >&2
        mkdir -p "$dir"
        local start
        start=$(date +%s)
        # GOTOOLCHAIN=local: fail with a clear message rather than download a newer Go.
        # -mod=readonly: the committed go.sum is the pin; a missing entry fails the build.
        # -modcacherw: the module cache can be removed with rm -rf.
        (cd "$here/$module" && env GOPATH="$tools/go/path" \
            GOMODCACHE="$tools/go/path/pkg/mod" \
            GOCACHE="$gocache" \
            GOTOOLCHAIN=local \
            GOFLAGS="-modcacherw -mod=readonly" \
            CGO_ENABLED=0 \
            go build -trimpath -ldflags="-s -w" -o "$bin.tmp" .) >&2
        mv -f "$bin.tmp" "$bin"   # a binary at the keyed path is always complete
        echo "interop install: built $module in $(($(date +%s) - start))s" >&2
    fi
    echo "$var=$bin"
}

build KVMOUNT_DRIVER_CLIENT_V1_5_4 driver-v1.5.4 mlog-standin
build KVMOUNT_DRIVER_CLIENT_V1_6_0 driver-v1.6.0 mlog-standin
build KVMOUNT_CSI_CLIENT csi-client
