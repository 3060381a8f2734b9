#!/usr/bin/env bash
# Builds, mostly one after another, everything tests/run.sh needs besides kvmount's own debug build:
# the per-machine tools (each install script caches its build outside the clone, keyed by
# version) and kvmount's images. tests/run.sh starts it in the background at the lowest CPU
# priority when the run begins, so that on a cold machine these long compiles (Kubernetes,
# the upstream driver, helm, the musl release builds) use the CPU the tests leave idle instead
# of each starting only when its section is reached; warm, every step takes seconds.
#
#   tests/prefetch.sh DIR
#
# For each step NAME, writes DIR/NAME.out (its stdout: the paths or VAR=path lines the run
# reads), DIR/NAME.log (its stderr) and, last, DIR/NAME.rc (its exit status). A step that
# fails does not stop the next: the section that needs it reports the failure with the log.
# The order is the order tests/run.sh needs them in; the images build beside the cluster.
set -uo pipefail
cd "$(dirname "$0")/.."
dir=${1:?usage: tests/prefetch.sh DIR}
mkdir -p "$dir"

step() {
    local name=$1 rc=0 start
    shift
    start=$(date +%s)
    "$@" >"$dir/$name.out" 2>"$dir/$name.log" </dev/null || rc=$?
    echo "prefetch: $name took $(($(date +%s) - start))s (exit $rc)" >>"$dir/$name.log"
    echo "$rc" >"$dir/$name.rc"
}

step csi-sanity tests/csi-sanity/install.sh
step interop tests/interop/install.sh
step venv tests/python/venv.sh
step helm tests/deploy/install-helm.sh
# The images and the cluster's parts side by side, the only two steps that do: each leaves
# part of the CPU idle on its own (the images' fat-LTO link steps, the Go builds' links and
# downloads). Cold on this 2-core machine (2026-12-07): one after the other they took 1096 s
# and 1145 s and the run 61m02s (CPU 1.55 cores busy on average); side by side both ended
# after 1916 s and the run took 52m23s (1.77 cores).
if [ "${KVMOUNT_IMAGES:-}" = skip ]; then
    echo "KVMOUNT_IMAGES=skip" >"$dir/images.log"
    echo 0 >"$dir/images.rc"
else
    # Both platforms, into the run's dir: the deploy section's reproducibility check builds
    # again (the same cargo target dirs, nothing left to compile) and compares, and the
    # cluster section imports this build (KVMOUNT_IMAGE_DIR).
    step images deploy/images/build.sh --out "$dir/images" &
fi
step cluster tests/cluster/install.sh
step azure-provider bench/azure-provider/install.sh
wait
