#!/usr/bin/env bash
# Benchmarks, kvmount side by side with the Azure provider (needs root: a network namespace,
# real tmpfs mounts). One command:
#
#   bench/run.sh            # builds (the harness in release, kvmount's binaries in the dist and
#                           # dist-agent profiles they ship in; ~25 min cold on 2 busy cores,
#                           # seconds when cached),
#                           # then the full run (~7 min on 2 cores):
#                           # writes docs/benchmarks.md and docs/bench-*.svg
#   bench/run.sh --quick    # debug build, a few samples (< 3 min): checks the harness, writes
#                           # its report to a temp dir and prints it, then cluster-budget
#                           # --quick (10 daemons, about 40 s); tests/run.sh runs this
#   bench/run.sh node       # kvmount's standalone CSI node plugin (publish latency, RSS)
#   bench/run.sh rotation   # kvmount's Key Vault GETs per rotation interval (docs/rotation-requests.svg)
#   bench/run.sh sidecar    # the sidecar agent and webhook alone
#   bench/run.sh pod-start  # pod start with secrets in the real cluster (tests/cluster/): kvmount's
#                           # CSI volume, injected pods (native sidecar, init-only) and a Secret
#                           # volume side by side (~14 min; bench/podstart.py): writes
#                           # bench/results/pod-start.json and its section of docs/benchmarks.md;
#                           # with --quick one round of 1 and 10 objects (~2 min), printed only. The mock vault
#                           # is KVMOUNT_PROVIDER_BIN, else the release build (built now; --quick:
#                           # target/debug/kvmount-provider),
#                           # the images KVMOUNT_IMAGE_DIR (default: deploy/images/build.sh now)
#   bench/run.sh cluster-budget   # 100 node daemons against one mock vault, rotation every 30 s:
#                           # Key Vault requests per 10 s window, RSS and CPU, beside the Azure
#                           # provider's arithmetic (~4 min after the build); writes its section
#                           # of docs/benchmarks.md and docs/bench-cluster-budget.svg
#
# The side-by-side part (provider-bench) runs in a private network namespace (unshare) whose
# hosts file maps the vault host, the custom cloud's Entra authority and login.microsoftonline.com
# (MSAL's instance discovery) to 127.0.0.1, where the mock vault listens on :443. The Azure
# provider is built from the Go module proxy by bench/azure-provider/install.sh (cached in
# /var/cache/kvmount/tools). Every process in the namespace is ended when it exits, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
quick=0
which=all
for arg in "$@"; do
    case "$arg" in
        --quick) quick=1 ;;
        all|node|rotation|sidecar|pod-start|cluster-budget) which=$arg ;;
        *) echo "usage: bench/run.sh [--quick] [all|node|rotation|sidecar|pod-start|cluster-budget]" >&2; exit 2 ;;
    esac
done
if [ "$(id -u)" != 0 ]; then
    echo "bench/run.sh: needs root (network namespace, tmpfs mounts)" >&2
    exit 1
fi
started=$(date +%s)
# The binaries run with the environment they ship with. With RUST_BACKTRACE set, every error
# the Azure SDK makes (one per 401, 404, retry) captures a stack trace: it costs CPU, and the
# unwinder pulls the binary's unwind tables into memory (0.3 MiB of the agent's RSS).
unset RUST_BACKTRACE RUST_LIB_BACKTRACE

# Private temp dirs (disk and tmpfs), removed at the end.
bench_tmp=$(mktemp -d "${TMPDIR:-/tmp}/kvmount-bench.XXXXXX")
bench_shm=$(mktemp -d /dev/shm/kvbench.XXXXXX)
trap 'rm -rf "$bench_tmp" "$bench_shm"' EXIT
export TMPDIR=$bench_tmp KVMOUNT_TEST_SHM=$bench_shm

# Sets up the Rust musl target and musl-gcc when they are missing (rustup, apt-get as root);
# false when either cannot be had.
musl_ready() {
    rustup target list --installed 2>/dev/null | grep -qx "$1" \
        || rustup target add "$1" >&2 || return 1
    command -v musl-gcc >/dev/null && return 0
    command -v apt-get >/dev/null || return 1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends musl-tools >&2 \
        || return 1
    command -v musl-gcc >/dev/null
}

if [ "$which" = pod-start ]; then
    # The cluster's run dir (kc-*) goes under a short private dir of its own (the kubelet's
    # socket paths in it must fit in 107 bytes, whatever TMPDIR the caller has); swept on exit
    # whatever happened.
    cluster_parent=$(mktemp -d /tmp/kvps.XXXXXX)
    sweep_cluster() {
        for dir in "$cluster_parent"/kc-*; do
            [ -d "$dir" ] && python3 tests/cluster/cluster.py down "$dir" || true
        done
        rm -rf "$bench_tmp" "$bench_shm" "$cluster_parent"
    }
    trap sweep_cluster EXIT
    cluster_env=$(tests/cluster/install.sh)
    while IFS='=' read -r name path; do export "$name=$path"; done <<<"$cluster_env"
    venv=$(tests/python/venv.sh)
    # The mock vault runs on the node's two cores beside the kubelet and kvmount: its debug
    # build spends far longer per request than Key Vault's servers would add, which every cold
    # row pays once per object. A full run serves it from the release build.
    if [ "$quick" = 0 ] && [ -z "${KVMOUNT_PROVIDER_BIN:-}" ]; then
        cargo build --locked --release -p kvmount-provider --bin kvmount-provider
        export KVMOUNT_PROVIDER_BIN=$PWD/target/release/kvmount-provider
    fi
    if [ "$quick" = 1 ]; then
        TMPDIR=$cluster_parent "$venv/bin/python" bench/podstart.py run --quick --out "$bench_tmp/pod-start.json"
    else
        mkdir -p bench/results
        TMPDIR=$cluster_parent "$venv/bin/python" bench/podstart.py run --out bench/results/pod-start.json
        "$venv/bin/python" bench/podstart.py report bench/results/pod-start.json docs/benchmarks.md
    fi
    echo "bench/run.sh pod-start$([ "$quick" = 1 ] && echo " --quick"): done in $(( $(date +%s) - started ))s"
    exit 0
fi

# Only the binaries this run starts (each bench binary is a long thin-LTO link in release).
case "$which" in
    all) bins=(--bin provider-bench --bin sidecar-bench --bin bench-report) ;;
    node) bins=(--bin node-bench) ;;
    rotation) bins=(--bin rotation-bench) ;;
    sidecar) bins=(--bin sidecar-bench) ;;
    cluster-budget) bins=(--bin cluster-budget) ;;
esac
# The quick run checks the cluster simulation's harness too.
if [ "$quick" = 1 ] && [ "$which" = all ]; then bins+=(--bin cluster-budget); fi
shipped=(-p kvmount-provider -p kvmount-sidecar --bin kvmount-provider --bin kvmount-sidecar)
# The cluster simulation starts only the node daemon.
if [ "$which" = cluster-budget ]; then shipped=(-p kvmount-provider --bin kvmount-provider); fi
agent=(-p kvmount-sidecar --bin kvmount-agent)
if [ "$quick" = 1 ]; then
    profile=debug
    nice -n 10 cargo build -q -p kvmount-bench "${bins[@]}" "${shipped[@]}" --bin kvmount-agent
    product=$root/target/debug agent_dir=$root/target/debug
else
    # The harness in release; the daemon, webhook and agent under test as they ship: built
    # by the images' own cargo commands (deploy/images/assemble.py cargo-commands: static
    # musl, `--profile dist --no-default-features`, the agent `dist-agent`; RELR relocations,
    # see .cargo/config.toml), here in target/. Without the musl target or musl-gcc (for
    # ring's C code) the same profiles are built for glibc, which maps glibc's shared
    # libraries (about 1.9 MiB more RSS per process) and allocates with glibc's malloc; the
    # report says which binaries were measured.
    profile=release
    nice -n 10 cargo build --release -p kvmount-bench "${bins[@]}"
    # The binaries this run starts.
    case "$which" in
        all|sidecar) wanted=" kvmount-provider kvmount-sidecar kvmount-agent " ;;
        *) wanted=" kvmount-provider " ;;
    esac
    declare -A built=()
    musl=x86_64-unknown-linux-musl
    if musl_ready "$musl"; then
        # One line per command: BIN=FILE[,BIN=FILE...], a tab, the command's words.
        while IFS=$'\t' read -r outputs words; do
            IFS=, read -r -a pairs <<<"$outputs"
            needed=0
            for pair in "${pairs[@]}"; do
                case "$wanted" in *" ${pair%%=*} "*) needed=1 ;; esac
            done
            [ "$needed" = 1 ] || continue
            IFS=$'\t' read -r -a command <<<"$words"
            nice -n 10 "${command[@]}"
            for pair in "${pairs[@]}"; do built[${pair%%=*}]=${pair#*=}; done
        done < <(python3 deploy/images/assemble.py cargo-commands --arch amd64 --target-dir "$root/target")
    else
        echo "bench/run.sh: no $musl toolchain here; measuring glibc builds (dynamic) of the shipped profiles" >&2
        nice -n 10 cargo build --profile dist --no-default-features "${shipped[@]}"
        built[kvmount-provider]=$root/target/dist/kvmount-provider
        built[kvmount-sidecar]=$root/target/dist/kvmount-sidecar
        case "$wanted" in *" kvmount-agent "*)
            nice -n 10 cargo build --profile dist-agent "${agent[@]}"
            built[kvmount-agent]=$root/target/dist-agent/kvmount-agent ;;
        esac
    fi
    product=$(dirname "${built[kvmount-provider]}")
    agent_dir=$(dirname "${built[kvmount-agent]:-$root/target/dist-agent/kvmount-agent}")
fi
bin=$root/target/$profile
export KVMOUNT_KVMOUNT_PROVIDER_BIN=$product/kvmount-provider
export KVMOUNT_KVMOUNT_SIDECAR_BIN=$product/kvmount-sidecar KVMOUNT_KVMOUNT_AGENT_BIN=$agent_dir/kvmount-agent

# Runs "$@" in a new network and mount namespace: loopback up, our hosts file over /etc/hosts.
# On exit (normal, failure or signal) every other process left in that namespace is ended.
in_netns() {
    local hosts=$bench_tmp/hosts
    printf '127.0.0.1 localhost bench.vault.kvmount.test login.kvmount.test login.microsoftonline.com\n::1 localhost\n' >"$hosts"
    unshare --net --mount --propagation private --fork --kill-child=SIGTERM -- bash -c '
        set -euo pipefail
        hosts=$1; shift
        ns=$(readlink /proc/$$/ns/net)
        end_namespace() {
            for p in /proc/[0-9]*; do
                pid=${p#/proc/}
                [ "$pid" = $$ ] && continue
                [ "$(readlink "$p/ns/net" 2>/dev/null)" = "$ns" ] && kill "$pid" 2>/dev/null || true
            done
        }
        trap end_namespace EXIT
        ip link set lo up
        mount --bind "$hosts" /etc/hosts
        "$@"
    ' in-netns "$hosts" "$@"
}

quick_arg=()
if [ "$quick" = 1 ]; then quick_arg=(--quick); fi

if [ "$which" = node ]; then
    "$bin/node-bench"
    exit 0
fi
if [ "$which" = rotation ]; then
    "$bin/rotation-bench"
    exit 0
fi
if [ "$which" = sidecar ]; then
    "$bin/sidecar-bench" "${quick_arg[@]}"
    exit 0
fi
if [ "$which" = cluster-budget ]; then
    # Loopback only (the mock on a free port, the daemons' --resolve): no network namespace.
    "$bin/cluster-budget" "${quick_arg[@]}"
    echo "bench/run.sh cluster-budget${quick_arg[*]:+ ${quick_arg[*]}}: done in $(( $(date +%s) - started ))s"
    exit 0
fi

results=$bench_tmp/results
mkdir -p "$results"
azure_args=()
if azure=$(bench/azure-provider/install.sh); then
    azure_args=(--azure "$azure")
else
    echo "bench/run.sh: the Azure provider could not be built (above); only kvmount's side runs" >&2
    azure_args=(--azure-missing "bench/azure-provider/install.sh failed on this machine (see the run's output)")
fi
{
    echo "- kvmount: $(git describe --always --dirty 2>/dev/null || echo unknown) ($profile build of this tree; the mock vault is kvmount-mock-vault from the same tree)"
    echo "- $(rustc --version)"
    echo "- $(go version 2>/dev/null || echo 'go: not installed')"
    echo "- requests: MountRequests built like the Secrets Store CSI Driver's (tests/src/lib.rs DriverRequest), workload identity, sent over each provider's Unix socket"
} >"$results/versions.txt"

echo "== provider-bench: kvmount and the Azure provider through the provider API"
in_netns "$bin/provider-bench" --out "$results" "${quick_arg[@]}" "${azure_args[@]}"
echo "== sidecar-bench: agent and webhook"
"$bin/sidecar-bench" "${quick_arg[@]}" --json "$results/sidecar.json"

if [ "$quick" = 1 ]; then
    mkdir -p "$bench_tmp/report"
    "$bin/bench-report" "$results" "$bench_tmp/report/benchmarks.md"
    # The report without its raw JSON: the harness works; these numbers are not for quoting.
    sed '/^## Raw numbers/,$d' "$bench_tmp/report/benchmarks.md"
    echo "== cluster-budget --quick: 10 node daemons against one mock vault"
    "$bin/cluster-budget" --quick
else
    "$bin/bench-report" "$results" docs/benchmarks.md
    # The pod-start section comes from its own, longer run (bench/run.sh pod-start); kept.
    if [ -f bench/results/pod-start.json ]; then
        python3 bench/podstart.py report bench/results/pod-start.json docs/benchmarks.md
    fi
    sed -n '/^## Goals/,/^## Mount latency/p' docs/benchmarks.md | sed '$d'
fi
echo "bench/run.sh${quick_arg[*]:+ ${quick_arg[*]}}: done in $(( $(date +%s) - started ))s"
