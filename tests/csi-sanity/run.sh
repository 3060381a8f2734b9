#!/usr/bin/env bash
# Runs csi-sanity (pinned in install.sh) against an already running CSI node plugin on a Unix
# socket, skipping what cannot apply to a node-only, ephemeral-volume driver (see README.md).
# Exit code: csi-sanity's (0 = every spec that ran passed); 2 for a usage error.
#
#   tests/csi-sanity/run.sh --endpoint /path/csi.sock [--secrets FILE] [--params FILE]
#                           [--skip REGEX] [--no-default-skip] [--junit FILE] [--verbose]
#                           [--wait SECONDS] [-- EXTRA_CSI_SANITY_ARGS...]
#
#   --endpoint   the plugin's socket: a path or unix:///path (required)
#   --secrets    YAML for --csi.secrets (NodePublishVolumeSecret: {k: v} is sent as `secrets`)
#   --params     YAML map for --csi.testvolumeparameters (only reaches CreateVolume.parameters,
#                which a node-only driver never sees; accepted for completeness)
#   --skip       a further ginkgo skip regex, ORed with the default one
#   --no-default-skip  drop the default skip (then Controller specs fail: UNIMPLEMENTED)
#   --junit      also write a JUnit XML report there
#   --verbose    ginkgo -v: print every spec's name and steps
#   --wait       seconds to wait for the socket to appear (default 10)
#
# Mount and staging dirs live under a fresh temp dir that is removed on exit, also on failure or
# Ctrl-C; any mount the plugin left under it is detached first (umount -l).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

# Spec names of csi-test v5.6.0 (ginkgo matches "<Describe> <Describe> <It>"):
#  - every Controller-side Describe carries "[Controller Server]" (Controller Service, ListSnapshots,
#    GetSnapshot, DeleteSnapshot, CreateSnapshot, ExpandVolume, ModifyVolume, Controller*VolumeHealth):
#    they call Controller RPCs unconditionally, whatever GetPluginCapabilities says;
#  - "[GroupController ...]" Describes (they also skip themselves without GROUP_CONTROLLER_SERVICE);
#  - "Node Service should work" / "should be idempotent": CreateVolume round trips, the only users of
#    the idempotency repeat count (10, no csi-sanity flag for it): skipping them turns repeats off;
#  - "NodeUnpublishVolume should remove target path": starts with Controller CreateVolume.
# Node specs gated on node capabilities (NodeStage/Unstage, NodeGetVolumeStats, NodeExpandVolume,
# volume/storage health, single node multi writer) are not listed: they skip themselves when the
# capability is not advertised and run (and fail without a Controller) if it wrongly is.
default_skip='\[Controller Server\]|\[GroupController |Node Service should (work|be idempotent)$|NodeUnpublishVolume should remove target path'

usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

endpoint= secrets= params= skip= use_default_skip=1 junit= verbose= wait_s=10
extra=()
while [ $# -gt 0 ]; do
    case $1 in
        --endpoint) endpoint=${2:?}; shift 2 ;;
        --secrets) secrets=${2:?}; shift 2 ;;
        --params) params=${2:?}; shift 2 ;;
        --skip) skip=${2:?}; shift 2 ;;
        --no-default-skip) use_default_skip=; shift ;;
        --junit) junit=${2:?}; shift 2 ;;
        --verbose) verbose=1; shift ;;
        --wait) wait_s=${2:?}; shift 2 ;;
        --) shift; extra=("$@"); break ;;
        -h|--help) usage ;;
        *) echo "csi-sanity run: unknown argument $1" >&2; usage ;;
    esac
done
[ -n "$endpoint" ] || { echo "csi-sanity run: --endpoint is required" >&2; usage; }
socket=${endpoint#unix://}
case $socket in /*) ;; *) socket=$PWD/$socket ;; esac
for f in "$secrets" "$params"; do
    [ -z "$f" ] || [ -r "$f" ] || { echo "csi-sanity run: cannot read $f" >&2; exit 2; }
done

regex=
[ -z "$use_default_skip" ] || regex=$default_skip
[ -z "$skip" ] || regex=${regex:+$regex|}$skip

bin=$("$here/install.sh")

for _ in $(seq $((wait_s * 10))); do [ -S "$socket" ] && break; sleep 0.1; done
[ -S "$socket" ] || { echo "csi-sanity run: no socket at $socket (is the plugin running?)" >&2; exit 2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/kvmount-csi-sanity.XXXXXX")
cleanup() {
    # Mounts under $work, deepest first (mountinfo field 5; octal escapes like \040 for spaces).
    awk -v w="$work/" 'index($5, w) == 1 {print $5}' /proc/self/mountinfo | sort -r \
        | while read -r m; do
            m=$(printf '%b' "$m")
            echo "csi-sanity run: detaching leftover mount $m" >&2
            umount -l "$m" || true
        done
    rm -rf --one-file-system "$work" || echo "csi-sanity run: could not remove $work" >&2
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# csi-sanity itself creates mountdir and stagingdir (mkdir, not -p: they must not exist yet)
# before every spec and removes them (rmdir: they must be empty again) after it.
args=(
    "--csi.endpoint=unix://$socket"
    "--csi.mountdir=$work/mount"
    "--csi.stagingdir=$work/staging"
)
[ -z "$secrets" ] || args+=("--csi.secrets=$secrets")
[ -z "$params" ] || args+=("--csi.testvolumeparameters=$params")
[ -z "$regex" ] || args+=("--ginkgo.skip=$regex")
[ -z "$junit" ] || args+=("--ginkgo.junit-report=$junit")
[ -z "$verbose" ] || args+=("--ginkgo.v")
[ -t 1 ] || args+=("--ginkgo.no-color")

echo "csi-sanity run: $bin ${args[*]} ${extra[*]}" >&2
rc=0
"$bin" "${args[@]}" "${extra[@]}" || rc=$?
echo "csi-sanity run: exit $rc" >&2
exit "$rc"
