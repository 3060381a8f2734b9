#!/usr/bin/env bash
# Builds the real single-node cluster tests/cluster/ runs, once per machine, into a cache outside
# the clone, and prints one `VAR=path` line per part on stdout (the environment
# tests/cluster/conftest.py reads):
#
#   KVMOUNT_CLUSTER_KUBE       kube-apiserver, kube-controller-manager, kube-scheduler, kubelet,
#                              kubectl v1.34.4 (Go module proxy, tests/cluster/kube/go.mod)
#   KVMOUNT_CLUSTER_ETCD       etcd v3.6.4 (Go module proxy, tests/cluster/etcd/go.mod)
#   KVMOUNT_CLUSTER_DEBIAN     containerd, containerd-shim-runc-v2, ctr, runc, CNI bridge,
#                              host-local, loopback, busybox (static): Debian bookworm packages,
#                              `apt-get download` + `dpkg-deb -x`, nothing installed system-wide
#   KVMOUNT_CLUSTER_REGISTRAR  the test registrar (tests/cluster/registrar)
#   KVMOUNT_CLUSTER_DRIVER_V1_6_0, KVMOUNT_CLUSTER_DRIVER_V1_5_4
#                              the upstream Secrets Store CSI Driver (secrets-store-csi-driver
#                              binary, and deploy/ with its CRDs and RBAC from the module zip)
#
# Each part lives in ${KVMOUNT_TOOLS:-/var/cache/kvmount/tools}/cluster/<part>-<key>/, the key
# covering its versions, the Go module's go.mod/go.sum and sources (and the mlog stand-in the
# driver modules replace monis.app/mlog with) and the Go version. A part is built into
# <dir>.tmp and renamed: a keyed directory is always complete. A lock per part lets two runs
# share the cache. Everything Go writes stays under the cache: the module cache (GOPATH,
# GOMODCACHE) is the one the other install scripts share, and each part's build cache (over
# 3 GB for Kubernetes) sits next to it until that part is built, then is removed (kept after a
# failed or interrupted build so the next run resumes).
#
# Cold, on this shared 2-core machine (two other engineers compiling Rust, load 11), measured
# 2026-12-07 with the module cache partly warm (each step logs its time on stderr): Kubernetes
# 1369 s (kube-apiserver 861 s, kubelet 198 s, kube-controller-manager 150 s, kubectl 105 s,
# kube-scheduler 13 s), the driver 411 s per version, etcd 184 s, the registrar 91 s, the Debian
# packages 12 s: about 35 min in all. Cached: 4 s. Kept: 615 MB (Kubernetes 395 MB).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
tools=${KVMOUNT_TOOLS:-/var/cache/kvmount/tools}
cache=$tools/cluster
kube_version=v1.34.4
etcd_version=v3.6.4
debian_packages="containerd runc containernetworking-plugins busybox-static"

if ! command -v go >/dev/null 2>&1; then
    echo "cluster install: needs Go >= 1.25.9 (driver v1.6.0's go.mod)" >&2
    exit 1
fi
goversion=$(go env GOVERSION)
mkdir -p "$cache" "$tools/go/path"

log() { echo "cluster install: $*" >&2; }

# The sources a Go part is built from (directories relative to tests/), with extra key text.
sources_hash() {
    local extra=$1
    shift
    (cd "$here/.." && find "$@" -type f \( -name '*.go' -o -name go.mod -o -name go.sum \) | LC_ALL=C sort \
        | xargs sha256sum; echo "$goversion $extra") | sha256sum | cut -c1-16
}

# go_build MODULE_DIR GOCACHE OUT PACKAGE [LDFLAGS]: one main package, as every Go tool here is
# built (GOTOOLCHAIN=local: a clear failure rather than a downloaded Go; -mod=readonly: the
# committed go.sum is the pin; -modcacherw: the module cache can be removed with rm -rf).
go_build() {
    local module=$1 gocache=$2 out=$3 pkg=$4 ldflags=${5:-}
    (cd "$module" && env GOPATH="$tools/go/path" \
        GOMODCACHE="$tools/go/path/pkg/mod" \
        GOCACHE="$gocache" \
        GOTOOLCHAIN=local \
        GOFLAGS="-modcacherw -mod=readonly" \
        CGO_ENABLED=0 \
        go build -trimpath -tags providerless -ldflags="-s -w $ldflags" -o "$out" "$pkg") >&2
}

# with_lock DIR FUNCTION ARGS...: unless DIR exists, runs FUNCTION ARGS DIR.tmp under a lock on
# DIR.lock and renames DIR.tmp to DIR. A failed or interrupted build leaves no DIR.tmp behind.
building=""
trap 'if [ -n "$building" ]; then rm -rf "$building.tmp"; fi' EXIT
with_lock() {
    local dir=$1 lockfd
    shift
    [ -d "$dir" ] && return 0
    exec {lockfd}>"$dir.lock"
    flock "$lockfd"
    if [ ! -d "$dir" ]; then
        building=$dir
        rm -rf "$dir.tmp"
        mkdir -p "$dir.tmp"
        "$@" "$dir.tmp"
        mv "$dir.tmp" "$dir"
        rm -f "$dir.lock"
        building=""
    fi
    exec {lockfd}>&-
}

# --- Debian packages ------------------------------------------------------------------------
# Keyed by the candidate versions apt offers (a point release replaces the old .deb on the
# mirror, so exact versions cannot be pinned here).
candidates() {
    local p v out=""
    for p in $debian_packages; do
        v=$(apt-cache policy "$p" 2>/dev/null | awk '$1 == "Candidate:" {print $2}')
        if [ -z "$v" ] || [ "$v" = "(none)" ]; then return 1; fi
        out="$out $p=$v"
    done
    echo "${out# }"
}
build_debian() {
    local out=$1 start work
    start=$(date +%s)
    log "downloading $pins into $debian_dir"
    work=$(mktemp -d)
    # apt-get download writes into the cwd; as root it warns that _apt cannot write there (harmless).
    # One apt at a time on the machine (deploy/images/build.sh may run apt-get beside this).
    # shellcheck disable=SC2086
    (cd "$work" && flock /run/kvmount-apt.lock apt-get download -q $pins 2>&1 | grep -v 'sandbox' || true) >&2
    local deb
    for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$work/root"; done
    mkdir -p "$out/bin" "$out/cni"
    cp "$work/root/usr/bin/containerd" "$work/root/usr/bin/containerd-shim-runc-v2" \
        "$work/root/usr/bin/ctr" "$work/root/usr/sbin/runc" "$out/bin/"
    cp "$work/root/bin/busybox" "$out/bin/busybox"
    cp "$work/root/usr/lib/cni/bridge" "$work/root/usr/lib/cni/host-local" \
        "$work/root/usr/lib/cni/loopback" "$out/cni/"
    echo "$pins" >"$out/VERSIONS"
    rm -rf "$work"
    log "Debian packages unpacked in $(($(date +%s) - start))s"
}
part_debian() {
    pins=$(candidates || { log "apt-get update (package lists missing)"; flock /run/kvmount-apt.lock apt-get update -qq >&2; candidates; })
    debian_dir=$cache/debian-$(echo "$pins" | sha256sum | cut -c1-16)
    with_lock "$debian_dir" build_debian
    echo "KVMOUNT_CLUSTER_DEBIAN=$debian_dir"
}

# --- etcd -----------------------------------------------------------------------------------
build_etcd() {
    local out=$1 start gocache=$cache/gocache-etcd
    start=$(date +%s)
    log "building etcd $etcd_version with $goversion into $etcd_dir"
    # go.etcd.io/etcd/server/v3 is itself etcd's main package.
    go_build "$here/etcd" "$gocache" "$out/etcd" go.etcd.io/etcd/server/v3
    rm -rf "$gocache"
    log "built etcd in $(($(date +%s) - start))s"
}
part_etcd() {
    etcd_dir=$cache/etcd-$etcd_version-$(sources_hash "$etcd_version" cluster/etcd)
    with_lock "$etcd_dir" build_etcd
    echo "KVMOUNT_CLUSTER_ETCD=$etcd_dir"
}

# --- the test registrar ---------------------------------------------------------------------
build_registrar() {
    local out=$1 start gocache=$cache/gocache-registrar
    start=$(date +%s)
    log "building the test registrar with $goversion into $registrar_dir"
    go_build "$here/registrar" "$gocache" "$out/registrar" .
    rm -rf "$gocache"
    log "built the registrar in $(($(date +%s) - start))s"
}
part_registrar() {
    registrar_dir=$cache/registrar-$(sources_hash "" cluster/registrar)
    with_lock "$registrar_dir" build_registrar
    echo "KVMOUNT_CLUSTER_REGISTRAR=$registrar_dir"
}

# --- the upstream Secrets Store CSI Driver --------------------------------------------------
build_driver() {
    local version=$1 out=$2 start gocache=$cache/gocache-driver zip
    start=$(date +%s)
    log "building the Secrets Store CSI Driver $version with $goversion into $out"
    go_build "$here/driver-$version" "$gocache" "$out/secrets-store-csi-driver" \
        sigs.k8s.io/secrets-store-csi-driver/cmd/secrets-store-csi-driver
    # Its manifests and CRDs, from the module the binary was built from.
    zip=$(cd "$here/driver-$version" && env GOPATH="$tools/go/path" GOMODCACHE="$tools/go/path/pkg/mod" \
        GOTOOLCHAIN=local GOFLAGS="-modcacherw -mod=readonly" \
        go list -m -f '{{.Dir}}' sigs.k8s.io/secrets-store-csi-driver)
    cp -r "$zip/deploy" "$out/deploy"
    chmod -R u+w "$out/deploy"
    rm -rf "$gocache"
    log "built the driver $version in $(($(date +%s) - start))s"
}
part_drivers() {
    local version dir var
    for version in v1.6.0 v1.5.4; do
        dir=$cache/driver-$version-$(sources_hash "$version" "cluster/driver-$version" interop/mlog-standin)
        with_lock "$dir" build_driver "$version"
        var=KVMOUNT_CLUSTER_DRIVER_V${version#v}
        echo "${var//./_}=$dir"
    done
}

# --- Kubernetes -----------------------------------------------------------------------------
build_kube() {
    local out=$1 start gocache=$cache/gocache-kube b t ldflags="" pkg
    local minor=${kube_version#v1.}
    minor=${minor%%.*}
    # What hack/lib/version.sh sets: without it the binaries say v0.0.0 and version checks fail.
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldflags="$ldflags -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
        ldflags="$ldflags -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
    done
    start=$(date +%s)
    log "building Kubernetes $kube_version with $goversion into $kube_dir (cold: ~23 min here)"
    # The apiserver first: it compiles most of what the others share.
    for b in kube-apiserver kubelet kube-controller-manager kubectl kube-scheduler; do
        t=$(date +%s)
        go_build "$here/kube" "$gocache" "$out/$b" "k8s.io/kubernetes/cmd/$b" "$ldflags"
        log "built $b in $(($(date +%s) - t))s"
    done
    rm -rf "$gocache"
    log "built Kubernetes in $(($(date +%s) - start))s"
}
part_kube() {
    kube_dir=$cache/kube-$kube_version-$(sources_hash "$kube_version" cluster/kube)
    with_lock "$kube_dir" build_kube
    echo "KVMOUNT_CLUSTER_KUBE=$kube_dir"
}

# Every part by default; `install.sh kube etcd` builds (or finds) only those.
for part in "${@:-debian etcd registrar drivers kube}"; do
    for p in $part; do "part_$p"; done
done
