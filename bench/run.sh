#!/usr/bin/env bash
# Benchmarks (needs root: real tmpfs mounts). Builds the release binaries, then runs against the
# mock vault on this machine: the node plugin benchmark (publish latency, RSS), the rotation
# benchmark (Key Vault requests per interval; writes docs/rotation-requests.svg) and the sidecar
# benchmark. Each prints a Markdown table. `bench/run.sh node|rotation|sidecar` runs one of them.
set -euo pipefail
cd "$(dirname "$0")/.."
which=${1:-all}
# Private temp dirs (disk and tmpfs), removed at the end.
bench_tmp=$(mktemp -d "${TMPDIR:-/tmp}/kvmount-bench.XXXXXX")
bench_shm=$(mktemp -d /dev/shm/kvbench.XXXXXX)
trap 'rm -rf "$bench_tmp" "$bench_shm"' EXIT
export TMPDIR=$bench_tmp KVMOUNT_TEST_SHM=$bench_shm
export KVMOUNT_KVMOUNT_PROVIDER_BIN="$PWD/target/release/kvmount-provider"
case "$which" in
    all|node|rotation|sidecar) ;;
    *) echo "usage: bench/run.sh [all|node|rotation|sidecar]" >&2; exit 2 ;;
esac
cargo build --release -p kvmount-provider -p kvmount-sidecar -p kvmount-bench
if [ "$which" = all ] || [ "$which" = node ]; then
    target/release/node-bench
fi
if [ "$which" = all ] || [ "$which" = rotation ]; then
    target/release/rotation-bench
fi
if [ "$which" = all ] || [ "$which" = sidecar ]; then
    KVMOUNT_KVMOUNT_SIDECAR_BIN="$PWD/target/release/kvmount-sidecar" \
        KVMOUNT_KVMOUNT_AGENT_BIN="$PWD/target/release/kvmount-agent" target/release/sidecar-bench
fi
