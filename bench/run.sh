#!/usr/bin/env bash
# Benchmarks (needs root: real tmpfs mounts). Builds the release daemon, then runs against the
# mock vault on this machine: the node plugin benchmark (publish latency, RSS) and the rotation
# benchmark (Key Vault requests per interval; writes docs/rotation-requests.svg). Prints Markdown.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p kvmount-provider -p kvmount-bench
export KVMOUNT_KVMOUNT_PROVIDER_BIN="$PWD/target/release/kvmount-provider"
# Private temp dirs (disk and tmpfs), removed at the end.
bench_tmp=$(mktemp -d "${TMPDIR:-/tmp}/kvmount-bench.XXXXXX")
bench_shm=$(mktemp -d /dev/shm/kvbench.XXXXXX)
trap 'rm -rf "$bench_tmp" "$bench_shm"' EXIT
export TMPDIR=$bench_tmp KVMOUNT_TEST_SHM=$bench_shm
what=${1:-all}
case "$what" in
    node) target/release/node-bench ;;
    rotation) target/release/rotation-bench ;;
    all) target/release/node-bench; echo; target/release/rotation-bench ;;
    *) echo "usage: bench/run.sh [node|rotation|all]" >&2; exit 2 ;;
esac
