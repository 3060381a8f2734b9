#!/usr/bin/env bash
# Builds kvmount's two images with no container engine, for linux/amd64 and linux/arm64:
#   kvmount-provider  the node daemon (built without the `dev` feature: no mock vault)
#   kvmount-sidecar   the admission webhook and kvmount-agent, which the webhook injects
# from static musl binaries (the `dist` and `dist-agent` profiles; arm64 cross-built) on an
# empty base holding what distroless `static` gives them (users and groups for 65532
# `nonroot`, Debian's CA bundle, /tmp), running as 65532:65532. Reproducible: the same sources
# give the same digests, in any clone (fixed mtimes, sorted entries, numeric owners, no
# timestamps; see assemble.py). Prints the digests.
#
#   deploy/images/build.sh                                   # both images, both platforms
#   deploy/images/build.sh --repository myacr.azurecr.io/kvmount --tag 0.1.0-rc1
#   deploy/images/build.sh --arch amd64 --out /tmp/images    # one platform only
#
# Writes, under --out (default target/images):
#   oci/kvmount-{provider,sidecar}/          OCI image layouts, one index listing both platforms
#   docker/kvmount-{provider,sidecar}-linux-{amd64,arm64}.tar
#                                            docker-archive per image and platform
#                                            (`ctr -n k8s.io images import`, `docker load`)
#   images.json                              names, digests, paths, the cargo commands
#
# Flags and their environment variables: --repository (KVMOUNT_IMAGE_REPOSITORY, default
# ghcr.io/kvmount), --tag (KVMOUNT_IMAGE_TAG, default the crate version), --arch
# (KVMOUNT_IMAGE_ARCH, default amd64,arm64), --out (KVMOUNT_IMAGE_OUT). SOURCE_DATE_EPOCH sets
# the files' mtime (default 0). Needs cargo/rustup; installs the musl targets (rustup) and, as
# root with apt-get, the C compilers ring needs (musl-tools; gcc-aarch64-linux-gnu and
# libc6-dev-arm64-cross), each only when missing. Push with crane, oras or skopeo (README).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"

repository=${KVMOUNT_IMAGE_REPOSITORY:-ghcr.io/kvmount}
tag=${KVMOUNT_IMAGE_TAG:-}
arches=${KVMOUNT_IMAGE_ARCH:-amd64,arm64}
out=${KVMOUNT_IMAGE_OUT:-$root/target/images}
while [ $# -gt 0 ]; do
    case "$1" in
        --repository) repository=${2:?--repository needs a value}; shift 2 ;;
        --tag) tag=${2:?--tag needs a value}; shift 2 ;;
        --arch) arches=${2:?--arch needs a value}; shift 2 ;;
        --out) out=${2:?--out needs a value}; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "build.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
repository=${repository%/}

version=$(python3 -c 'import tomllib; print(tomllib.load(open("Cargo.toml", "rb"))["workspace"]["package"]["version"])')
tag=${tag:-$version}
licenses=$(python3 -c 'import tomllib; print(tomllib.load(open("Cargo.toml", "rb"))["workspace"]["package"]["license"])')
source_url=https://github.com/kvmount/kvmount
# The commit the images are built from; a tree with uncommitted changes says so.
revision=${KVMOUNT_IMAGE_REVISION:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
if [ -z "${KVMOUNT_IMAGE_REVISION:-}" ] && [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    revision=$revision-dirty
fi
epoch=${SOURCE_DATE_EPOCH:-0}

# Per machine, outside any clone (like the tests' tools): CI's fresh clones reuse the
# compiled dependencies, and cargo rebuilds only what changed (a clone at another path than the
# last build's recompiles kvmount's own crates and relinks: 10-11 min on the loaded 2-core
# development machine). One target dir per platform. Its path is part of the daemon's binary
# (see "Reproducible" in deploy/README.md): the same path gives the same digests.
tools=${KVMOUNT_TOOLS:-/var/cache/kvmount/tools}
target_root=$tools/images-target

# The CA bundle: Debian's ca-certificates at a pinned version (the digest of the images
# depends on it; bump both lines together), cached per machine once extracted.
ca_version=20250419~deb12u2
ca_deb_sha256=b9f76b5271a7ac373fd5e7e1b5b826a71ddd702b42a0d104955ecb1acfffc94b

log() { echo "build.sh: $*" >&2; }

host_arch=$(uname -m)
case "$host_arch" in
    x86_64) host_arch=amd64 ;;
    aarch64) host_arch=arm64 ;;
esac

# Rust target, GNU triple and Debian architecture of each platform.
rust_target() { case "$1" in amd64) echo x86_64-unknown-linux-musl ;; arm64) echo aarch64-unknown-linux-musl ;; *) return 1 ;; esac; }
gnu_triple() { case "$1" in amd64) echo x86_64-linux-gnu ;; arm64) echo aarch64-linux-gnu ;; esac; }

# The C compiler for ring's C and assembly: musl-gcc on the build machine's own platform (as
# the Dockerfiles do), the Debian GNU cross compiler for the other one. The cross compiler
# also links (the musl targets link rustc's self-contained musl and crt objects; the driver
# only has to be for the right machine).
c_compiler() {
    if [ "$1" = "$host_arch" ]; then echo musl-gcc; else echo "$(gnu_triple "$1")-gcc"; fi
}

ensure_toolchain() {
    local arch missing_targets=() packages=()
    for arch in "${arch_list[@]}"; do
        rustup target list --installed | grep -qx "$(rust_target "$arch")" \
            || missing_targets+=("$(rust_target "$arch")")
        if ! command -v "$(c_compiler "$arch")" >/dev/null; then
            if [ "$arch" = "$host_arch" ]; then
                packages+=(musl-tools)
            else
                local debarch=$arch
                packages+=("gcc-$(gnu_triple "$arch" | tr _ -)" "libc6-dev-$debarch-cross")
            fi
        fi
    done
    if [ ${#missing_targets[@]} -gt 0 ]; then
        log "rustup target add ${missing_targets[*]}"
        rustup target add "${missing_targets[@]}" >&2
    fi
    if [ ${#packages[@]} -gt 0 ]; then
        if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
            log "needs the Debian packages ${packages[*]} (C compilers for ring); install them or run as root on Debian"
            exit 1
        fi
        log "apt-get install ${packages[*]}"
        export DEBIAN_FRONTEND=noninteractive
        # One apt at a time on the machine (tests/prefetch.sh runs this beside
        # tests/cluster/install.sh, which runs apt-get too; apt refuses a held lock at once).
        flock /run/kvmount-apt.lock bash -c 'apt-get install -y -qq --no-install-recommends "$@" >&2 \
            || { apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends "$@" >&2; }' \
            apt "${packages[@]}"
    fi
}

# Prints the directory holding ca-certificates.crt and copyright.
ca_bundle() {
    local dir=$tools/images-ca/$ca_version tmp
    if [ ! -s "$dir/ca-certificates.crt" ] || [ ! -s "$dir/copyright" ]; then
        tmp=$(mktemp -d)
        # shellcheck disable=SC2064
        trap "rm -rf '$tmp'" RETURN
        log "fetching Debian ca-certificates $ca_version"
        if ! (cd "$tmp" && apt-get -o APT::Sandbox::User=root -qq download "ca-certificates=$ca_version" >&2) \
            && ! (apt-get update -qq >&2 && cd "$tmp" && apt-get -o APT::Sandbox::User=root -qq download "ca-certificates=$ca_version" >&2); then
            log "Debian ca-certificates $ca_version is not in the apt sources; bump ca_version and ca_deb_sha256 in $0"
            exit 1
        fi
        echo "$ca_deb_sha256  $(ls "$tmp"/ca-certificates_*.deb)" | sha256sum -c --quiet - >&2 \
            || { log "ca-certificates $ca_version: not the pinned sha256"; exit 1; }
        dpkg-deb -x "$tmp"/ca-certificates_*.deb "$tmp/x"
        # update-ca-certificates' bundle: every Mozilla root, in name order, one PEM after another.
        mkdir -p "$tmp/out"
        find "$tmp/x/usr/share/ca-certificates/mozilla" -name '*.crt' -print0 | LC_ALL=C sort -z \
            | xargs -0 cat >"$tmp/out/ca-certificates.crt"
        cp "$tmp/x/usr/share/doc/ca-certificates/copyright" "$tmp/out/copyright"
        mkdir -p "$(dirname "$dir")"
        rm -rf "$dir"
        mv "$tmp/out" "$dir"
    fi
    echo "$dir"
}

IFS=, read -r -a arch_list <<<"$arches"
for arch in "${arch_list[@]}"; do
    rust_target "$arch" >/dev/null || { log "unknown --arch $arch; accepted: amd64, arm64"; exit 2; }
done

ensure_toolchain
ca_dir=$(ca_bundle)

work=$(mktemp -d "${TMPDIR:-/tmp}/kvmount-images.XXXXXX")
trap 'rm -rf "$work"' EXIT

# The target dirs are shared by every clone on the machine, and cargo decides what is fresh by
# mtime: a clone whose files are older than the artifacts another clone's different sources
# left would get that clone's binaries. So each target dir records the content of the sources
# it was last built from (sha256 per file), and before building, every file whose content
# differs from that record is touched (cargo then rebuilds what depends on it, and only that).
# One build per target dir at a time (flock), and the binaries are copied out under the lock.
#   freshen STAMP NEW_STAMP: touches the files that differ from STAMP, writes the current
#   hashes to NEW_STAMP (moved over STAMP once the build succeeded).
freshen() {
    python3 - "$1" "$2" <<'PY'
import hashlib, os, subprocess, sys
stamp, new = sys.argv[1], sys.argv[2]
try:
    names = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], check=True,
                           capture_output=True).stdout.decode().split("\0")
except (OSError, subprocess.CalledProcessError):
    names = [os.path.relpath(os.path.join(d, f)) for d, dirs, files in os.walk(".")
             for f in files if not d.startswith(("./target", "./.git"))]
current = {}
for name in sorted(n for n in names if n and os.path.isfile(n)):
    with open(name, "rb") as f:
        current[name] = hashlib.sha256(f.read()).hexdigest()
recorded = {}
if os.path.exists(stamp):
    with open(stamp) as f:
        recorded = dict(line.rstrip("\n").split("  ", 1)[::-1] for line in f if "  " in line)
changed = [n for n, h in current.items() if recorded.get(n) != h]
for name in changed:
    os.utime(name)
with open(new, "w") as f:
    f.writelines(f"{h}  {n}\n" for n, h in current.items())
print(f"{len(changed)} of {len(current)} source files differ from the last build in this target dir")
PY
}

# Builds one platform's binaries into $work/bin/ARCH/; writes ARCH/BIN=FILE lines to
# $work/ARCH.binaries.
build_arch() {
    local arch=$1 target cc target_env target_dir commands outputs output cmd start lock bin file
    target=$(rust_target "$arch")
    cc=$(c_compiler "$arch")
    target_env=$(echo "$target" | tr - _)
    target_dir=$target_root/$arch
    mkdir -p "$target_root" "$work/bin/$arch"
    exec {lock}>"$target_dir.lock"
    flock "$lock"
    freshen "$target_dir.sources" "$work/$arch.sources"
    export "CC_$target_env=$cc"
    if [ "$arch" != "$host_arch" ]; then
        export "AR_$target_env=$(gnu_triple "$arch")-ar"
        export "CARGO_TARGET_$(echo "$target_env" | tr '[:lower:]' '[:upper:]')_LINKER=$cc"
    fi
    # The very cargo commands the Dockerfiles run (assemble.py holds them).
    commands=$(python3 deploy/images/assemble.py cargo-commands --arch "$arch" --target-dir "$target_dir")
    while IFS=$'\t' read -r outputs cmd; do
        read -r -a cmd <<<"$cmd"
        echo "${cmd[*]}"
        start=$(date +%s)
        CARGO_TARGET_DIR=$target_dir nice -n 10 "${cmd[@]}"
        echo "built in $(( $(date +%s) - start ))s: $outputs"
        for output in ${outputs//,/ }; do
            bin=${output%%=*} file=${output#*=}
            cp "$file" "$work/bin/$arch/$bin"
            echo "$arch/$bin=$work/bin/$arch/$bin" >>"$work/$arch.binaries"
        done
    done <<<"$commands"
    mv "$work/$arch.sources" "$target_dir.sources"
}

# The platforms build side by side (one target dir each): a fat-LTO link runs on one core, and
# the other platform's compiles fill the rest.
pids=()
for arch in "${arch_list[@]}"; do
    ( build_arch "$arch" 2>&1 | sed -u "s|^|[linux/$arch] |" >&2 ) &
    pids+=($!)
done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
[ "$failed" = 0 ] || { log "the build failed (see above)"; exit 1; }

binary_args=()
for arch in "${arch_list[@]}"; do
    while read -r line; do binary_args+=(--binary "$line"); done <"$work/$arch.binaries"
done

python3 deploy/images/assemble.py assemble \
    --out "$out" --repository "$repository" --tag "$tag" --version "$version" \
    --revision "$revision" --source "$source_url" --licenses "$licenses" --epoch "$epoch" \
    --arch "$arches" --ca-bundle "$ca_dir/ca-certificates.crt" --ca-copyright "$ca_dir/copyright" \
    --ca-version "$ca_version" "${binary_args[@]}"
