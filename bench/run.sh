#!/usr/bin/env bash
# Benchmarks (needs root: real tmpfs mounts). Builds the release binaries and runs the node
# plugin and sidecar benchmarks against the mock vault; each prints a Markdown table (copy it
# into the README). `bench/run.sh node` or `bench/run.sh sidecar` runs one of them.
set -euo pipefail
cd "$(dirname "$0")/.."
which=${1:-all}
if [ "$which" = all ] || [ "$which" = node ]; then
    cargo build --release -p kvmount-provider -p kvmount-bench
    KVMOUNT_KVMOUNT_PROVIDER_BIN="$PWD/target/release/kvmount-provider" target/release/node-bench
fi
if [ "$which" = all ] || [ "$which" = sidecar ]; then
    cargo build --release -p kvmount-sidecar -p kvmount-bench
    KVMOUNT_KVMOUNT_SIDECAR_BIN="$PWD/target/release/kvmount-sidecar" \
        KVMOUNT_KVMOUNT_AGENT_BIN="$PWD/target/release/kvmount-agent" target/release/sidecar-bench
fi
