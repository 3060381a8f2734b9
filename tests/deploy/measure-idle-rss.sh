#!/usr/bin/env bash
# Measures the release node daemon at idle, the number behind the chart's memory request:
# starts `kvmount-provider serve` (provider mode, then standalone mode with a CSI socket) on temp
# sockets with a tmpfs state dir under /dev/shm, waits for /readyz, samples /proc/PID/status for
# a few seconds, prints VmRSS, VmHWM and Threads, and stops the daemon. Not part of tests/run.sh.
#
#   cargo build --profile dist -p kvmount-provider && tests/deploy/measure-idle-rss.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${KVMOUNT_PROVIDER_BIN:-$root/target/dist/kvmount-provider}
[ -x "$bin" ] || { echo "build it first: cargo build --profile dist -p kvmount-provider" >&2; exit 1; }
work=$(mktemp -d "${TMPDIR:-/tmp}/kvmount-rss.XXXXXX")
state=$(mktemp -d /dev/shm/kvmount-rss-state.XXXXXX)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$work" "$state"; }
trap cleanup EXIT

measure() {
    local label=$1; shift
    local port=$((20000 + RANDOM % 20000))
    "$bin" serve --provider-socket "$work/provider.sock" --state-dir "$state" \
        --metrics-addr "127.0.0.1:$port" --log-format json "$@" >"$work/$label.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
        sleep 0.1
    done
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null || { cat "$work/$label.log" >&2; exit 1; }
    curl -sf "http://127.0.0.1:$port/metrics" >/dev/null   # one scrape, as Prometheus would
    sleep 3
    awk -v l="$label" '/^VmRSS|^VmHWM|^Threads/ {v[$1] = $2 " " $3} END {
        printf "%-12s VmRSS %s  VmHWM %s  Threads %s\n", l, v["VmRSS:"], v["VmHWM:"], v["Threads:"] }' "/proc/$pid/status"
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
}

measure provider
measure standalone --csi-socket "$work/csi.sock" --node-id rss-node
