#!/usr/bin/env bash
# Builds helm at a pinned version from the Go module proxy into the machine's tool cache (outside the clone) and prints
# the binary's path on stdout. Idempotent: when the binary there already is the pinned version
# (checked with `go version -m`), it is reused without building. Everything Go writes (GOPATH,
# GOMODCACHE, GOCACHE, GOBIN) stays under the cache dir, like tests/csi-sanity/install.sh.
#
#   tests/deploy/install-helm.sh            # prints e.g. /var/cache/kvmount/tools/helm/v3.22.0/bin/helm
#   HELM_VERSION=v3.21.4 tests/deploy/install-helm.sh
#   KVMOUNT_TOOLS=/elsewhere tests/deploy/install-helm.sh
#
# v3.22.0 is the newest helm v3 on the proxy; its go.mod needs Go >= 1.26.0.
set -euo pipefail

version=${HELM_VERSION:-v3.22.0}
module=helm.sh/helm/v3
root=$(cd "$(dirname "$0")/../.." && pwd)
# Per machine, outside any clone, so every clone (and CI's fresh one) reuses the build.
tools=${KVMOUNT_TOOLS:-/var/cache/kvmount/tools}
dir=$tools/helm/$version
bin=$dir/bin/helm

if ! command -v go >/dev/null 2>&1; then
    echo "helm install: needs Go (go.mod of $module@$version says which version)" >&2
    exit 1
fi

# The build also sets the Kubernetes version helm assumes without a cluster (.Capabilities in
# `helm template`, `helm lint`), as helm's Makefile does from its client-go version; without it
# helm says v1.20.0. The pin check requires that setting too.
is_pinned() {
    [ -x "$bin" ] && go version -m "$bin" 2>/dev/null \
        | awk -v m="$module" -v v="$version" '$1 == "mod" && $2 == m && $3 == v {ok = 1}
              $1 == "build" && /chartutil.k8sVersionMinor=/ {k = 1} END {exit !(ok && k)}'
}

if ! is_pinned; then
    echo "helm install: building $module/cmd/helm@$version with $(go env GOVERSION) into $dir/bin" >&2
    mkdir -p "$dir/bin" "$tools/go/path" "$tools/go/cache"
    start=$(date +%s)
    # helm's go.mod names the client-go it is built with: v0.MINOR.x is Kubernetes 1.MINOR.
    env GOPATH="$tools/go/path" GOMODCACHE="$tools/go/path/pkg/mod" GOTOOLCHAIN=local GOFLAGS=-modcacherw \
        go mod download "$module@$version" >&2
    gomod=$tools/go/path/pkg/mod/helm.sh/helm/v3@$version/go.mod
    k8s_minor=$(awk '$1 == "k8s.io/client-go" {split($2, v, "."); print v[2]}' "$gomod")
    [ -n "$k8s_minor" ] || { echo "helm install: no k8s.io/client-go in $gomod" >&2; exit 1; }
    ldflags="-X helm.sh/helm/v3/internal/version.version=$version"
    for pkg in pkg/lint/rules pkg/chartutil; do
        ldflags+=" -X helm.sh/helm/v3/$pkg.k8sVersionMajor=1 -X helm.sh/helm/v3/$pkg.k8sVersionMinor=$k8s_minor"
    done
    # GOTOOLCHAIN=local: fail with a clear message rather than download a newer Go.
    # GOFLAGS=-modcacherw: the module cache can be removed with rm -rf.
    env GOBIN="$dir/bin" \
        GOPATH="$tools/go/path" \
        GOMODCACHE="$tools/go/path/pkg/mod" \
        GOCACHE="$tools/go/cache" \
        GOTOOLCHAIN=local \
        GOFLAGS=-modcacherw \
        CGO_ENABLED=0 \
        go install -ldflags "$ldflags" "$module/cmd/helm@$version" >&2
    is_pinned || { echo "helm install: $bin is not $module $version after the build" >&2; exit 1; }
    echo "helm install: built in $(($(date +%s) - start))s" >&2
fi
echo "$bin"
