#!/usr/bin/env bash
# Runs the real-cluster suite alone (tests/run.sh runs it too, in its "real cluster" section):
# builds the cluster's parts once per machine (tests/cluster/install.sh, cached), starts the
# cluster, runs pytest on tests/cluster with the given arguments, and tears everything down,
# also when a test fails or the run is interrupted. Needs root.
#
#   tests/cluster/run.sh                  # every cluster test
#   tests/cluster/run.sh -k secret -x     # pytest arguments
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ "$(id -u)" != 0 ]; then
    echo "tests/cluster/run.sh: the cluster needs root" >&2
    exit 1
fi
# The cluster's run dir (kc-*) goes under a private TMPDIR, swept on exit whatever happened.
run_tmp=$(mktemp -d "${TMPDIR:-/tmp}/kvmount-cluster-run.XXXXXX")
sweep() {
    for dir in "$run_tmp"/kc-*; do
        [ -d "$dir" ] && python3 tests/cluster/cluster.py down "$dir" || true
    done
    rm -rf "$run_tmp"
}
trap sweep EXIT
export TMPDIR=$run_tmp

cluster_env=$(tests/cluster/install.sh)
while IFS='=' read -r name path; do export "$name=$path"; done <<<"$cluster_env"
venv=$(tests/python/venv.sh)
"$venv/bin/python" -m pytest -q -p no:cacheprovider tests/cluster "$@"
