#!/usr/bin/env bash
# Benchmarks (needs root: real tmpfs mounts). Builds the release daemon and runs the node
# plugin benchmark against the mock vault; prints a Markdown table (copy it into the README).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p kvmount-provider -p kvmount-bench
KVMOUNT_KVMOUNT_PROVIDER_BIN="$PWD/target/release/kvmount-provider" target/release/node-bench
