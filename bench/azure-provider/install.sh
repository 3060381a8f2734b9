#!/usr/bin/env bash
# Builds the Azure Key Vault provider for the Secrets Store CSI Driver
# (github.com/Azure/secrets-store-csi-driver-provider-azure) at a pinned release from the Go
# module proxy into the machine's tool cache (outside the clone), and prints the binary's path on stdout. Idempotent:
# a binary there that reports the pinned version (`--version`) is reused without building.
# Everything Go writes (GOPATH, GOMODCACHE, GOCACHE) stays under the cache dir.
#
#   bench/azure-provider/install.sh          # prints e.g. /var/cache/kvmount/tools/azure-provider/v1.7.2/bin/secrets-store-csi-driver-provider-azure
#   AZURE_PROVIDER_VERSION=v1.7.1 bench/azure-provider/install.sh
#   KVMOUNT_TOOLS=/elsewhere bench/azure-provider/install.sh
#   bench/azure-provider/install.sh --if-built   # print the path only if already built (exit 3 if not)
#
# `go install module/cmd@version` does not work here: it asks the proxy for the module's version
# list (to check for a deprecation notice), which the proxy refuses. So the exact version is
# downloaded with `go mod download` and built from the module cache with the module's own
# go.mod and go.sum (no replace directives in v1.7.x).
set -euo pipefail

version=${AZURE_PROVIDER_VERSION:-v1.7.2}
module=github.com/Azure/secrets-store-csi-driver-provider-azure
root=$(cd "$(dirname "$0")/../.." && pwd)
# Per machine, outside any clone, so every clone (and CI's fresh one) reuses the build.
tools=${KVMOUNT_TOOLS:-/var/cache/kvmount/tools}
dir=$tools/azure-provider/$version
bin=$dir/bin/secrets-store-csi-driver-provider-azure

is_pinned() {
    [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "\"version\":\"$version\""
}

if [ "${1:-}" = --if-built ]; then
    is_pinned || exit 3
    echo "$bin"
    exit 0
fi

if ! command -v go >/dev/null 2>&1; then
    echo "azure-provider install: needs Go (go.mod of $module@$version says which version)" >&2
    exit 1
fi

if ! is_pinned; then
    echo "azure-provider install: building $module@$version with $(go env GOVERSION) into $dir/bin" >&2
    mkdir -p "$dir/bin" "$tools/go/path" "$tools/go/cache"
    start=$(date +%s)
    # GOTOOLCHAIN=local: fail with a clear message rather than download a newer Go.
    # GOFLAGS=-modcacherw: the module cache can be removed with rm -rf.
    goenv=(env GOPATH="$tools/go/path" GOMODCACHE="$tools/go/path/pkg/mod" GOCACHE="$tools/go/cache"
        GOTOOLCHAIN=local GOFLAGS=-modcacherw CGO_ENABLED=0)
    src=$("${goenv[@]}" go mod download -json "$module@$version" \
        | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
    [ -d "$src" ] || { echo "azure-provider install: go mod download gave no module dir" >&2; exit 1; }
    (cd "$src" && "${goenv[@]}" GOFLAGS="-modcacherw -mod=readonly" go build -trimpath \
        -ldflags "-X $module/pkg/version.BuildVersion=$version" -o "$bin" ./cmd) >&2
    is_pinned || { echo "azure-provider install: $bin does not report $version after the build" >&2; exit 1; }
    echo "azure-provider install: built in $(($(date +%s) - start))s" >&2
fi
echo "$bin"
