#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a short time, coverage-guided (nightly; tests/run.sh
# calls it with KVMOUNT_FUZZ=1). The smoke run of the same harnesses on stable is part of every
# `cargo test`: tests/tests/fuzz_smoke.rs.
#
#   tests/fuzz.sh                 # each target for $KVMOUNT_FUZZ_SECONDS (default 10) seconds
#   KVMOUNT_FUZZ_SECONDS=3600 tests/fuzz.sh volume_writer   # a longer run of one target
#   KVMOUNT_FUZZ_JOBS=2 ...       # libFuzzer workers per target (default 1)
#
# A longer campaign is documented in fuzz/README.md (an hour or a night per target,
# keeping fuzz/corpus/<target>/ between runs so coverage accumulates).
#
# cargo-fuzz is installed into the git-ignored .tools/cargo-fuzz (pinned, --locked); fuzzing
# needs a nightly toolchain (rustup's `nightly`, installed here if missing). A crash stops the
# script with the input saved under fuzz/artifacts/<target>/: turn it into a regression case
# (a unit test beside the parser, or a line in tests/corpus/generate.py) before fixing it.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
seconds=${KVMOUNT_FUZZ_SECONDS:-10}
jobs=${KVMOUNT_FUZZ_JOBS:-1}
cargo_fuzz_version=0.13.2

tools=$root/.tools/cargo-fuzz
if ! "$tools/bin/cargo-fuzz" --version 2>/dev/null | grep -q "$cargo_fuzz_version"; then
    echo "== installing cargo-fuzz $cargo_fuzz_version into .tools/cargo-fuzz"
    cargo install --quiet --root "$tools" cargo-fuzz --version "$cargo_fuzz_version" --locked
fi
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "== installing the nightly toolchain (cargo-fuzz needs -Z sanitizer flags)"
    rustup toolchain install nightly --profile minimal
fi

fuzz() { rustup run nightly "$tools/bin/cargo-fuzz" "$@"; }

all=$(sed -n 's/^name = "\(.*\)"/\1/p' fuzz/Cargo.toml | grep -v '^kvmount-fuzz$')
targets=${*:-$all}

# Seeds: the checked-in hostile inputs, split per target, so a short run starts deep.
python3 - "$root" $targets <<'PY'
import json, os, sys
root, targets = sys.argv[1], sys.argv[2:]
def expand(s):
    out, rest = "", s
    while "@@" in rest:
        a, b = rest.split("@@", 1)
        count, _, tail = b.partition("*")
        text, sep, rest2 = tail.partition("@@")
        if not count.isdigit() or not sep:
            out, rest = out + a + "@@", b
            continue
        out, rest = out + a + text * int(count), rest2
    return out + rest
seeds = {t: [] for t in targets}
for line in open(os.path.join(root, "tests/corpus/inputs.jsonl"), encoding="utf-8"):
    case = json.loads(line)
    if "attributes_raw" in case:
        seeds.setdefault("provider_attributes", []).append(case["attributes_raw"])
    if "objects" in case:
        seeds.setdefault("provider_objects", []).append(case["objects"])
    if "object" in case:
        seeds.setdefault("provider_objects", []).append("array:\n  - |\n" + "".join("    " + l + "\n" for l in expand(case["object"]).splitlines()))
    if "permission" in case:
        seeds.setdefault("provider_permission", []).append(case["permission"])
for target in targets:
    d = os.path.join(root, "fuzz/corpus", target)
    os.makedirs(d, exist_ok=True)
    for i, s in enumerate(seeds.get(target, [])):
        data = expand(s).encode("utf-8", "surrogatepass")[: 1 << 16]
        with open(os.path.join(d, "seed-%03d" % i), "wb") as f:
            f.write(data)
PY

echo "== building fuzz targets (nightly, fuzz/target)"
start=$(date +%s)
if ! fuzz build --fuzz-dir fuzz >"$root/fuzz/build.log" 2>&1; then
    tail -n 40 "$root/fuzz/build.log" >&2
    echo "fuzz build failed (fuzz/build.log)" >&2
    exit 1
fi
echo "   built in $(( $(date +%s) - start ))s"

parallel=""
if [ "$jobs" -gt 1 ]; then parallel="-fork=$jobs"; fi

total=0
for target in $targets; do
    echo "== fuzz $target for ${seconds}s"
    t0=$(date +%s)
    log=$(mktemp "${TMPDIR:-/tmp}/kvmount-fuzz.XXXXXX")
    if ! fuzz run --fuzz-dir fuzz "$target" -- \
        -max_total_time="$seconds" $parallel -rss_limit_mb=2048 \
        -max_len=65536 -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        echo "fuzz target $target failed: the input is under fuzz/artifacts/$target/" >&2
        rm -f "$log"
        exit 1
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    rm -f "$log"
    total=$((total + ${runs:-0}))
    echo "   ${runs:-?} executions in $(( $(date +%s) - t0 ))s, no crash"
    if [ -n "${KVMOUNT_SUMMARY_DIR:-}" ]; then
        mkdir -p "$KVMOUNT_SUMMARY_DIR"
        printf '{"target":"%s","executions":%s,"seconds":%s}\n' "$target" "${runs:-0}" "$seconds" \
            >>"$KVMOUNT_SUMMARY_DIR/fuzz.jsonl"
    fi
done
echo "== fuzz: $(echo "$targets" | wc -w) targets, $total executions, no crash"
