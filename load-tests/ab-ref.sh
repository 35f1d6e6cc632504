#!/usr/bin/env bash
# A/B of any `giftd-load` scenario: giftd built at REF (in a throwaway git worktree) against this
# tree, the same giftd-load (this tree's) driving both, interleaved, RUNS runs each (default 3).
# Prints the median of METRIC (default gifts_per_sec) and of every p99 check, and the ratio.
#
#   load-tests/ab-ref.sh REF NAME SCENARIO [giftd-load args...]
#   e.g. load-tests/ab-ref.sh 58c7ffd sqlite-gifts gifts --rooms 64 --senders-per-room 1 \
#            --pipeline 16 --duration-secs 8
#
# Omit --spawn-server and --json: the script adds them. JSON reports go to
# load-tests/results/ab/NAME-{ref,head}-runN.json. For PostgreSQL, pass
# --server-env GIFTD_LEDGER__BACKEND=postgres and set PG_SCHEMA_URL=<url>: each run then gets a
# fresh schema there (GIFTD_LEDGER__POSTGRES_URL), dropped after it.
set -euo pipefail
cd "$(dirname "$0")/.."
REF=$1 NAME=$2
shift 2
RUNS=${RUNS:-3}
METRIC=${METRIC:-gifts_per_sec}
OUT=load-tests/results/ab
TARGET=${CARGO_TARGET_DIR:-target}
LOAD=$TARGET/release/giftd-load
WORK=$TARGET/ab-ref/$REF
mkdir -p "$OUT"
cargo build --release -p giftd --bin giftd && cargo build --release -p giftd-load
if [ ! -x "$WORK/target/release/giftd" ]; then
    rm -rf "$WORK/src"
    git worktree add --detach "$WORK/src" "$REF"
    CARGO_TARGET_DIR="$PWD/$WORK/target" cargo build --release \
        --manifest-path "$WORK/src/Cargo.toml" -p giftd --bin giftd
    git worktree remove --force "$WORK/src"
fi

run() { # side, binary, run
    local env=() schema=""
    if [ -n "${PG_SCHEMA_URL:-}" ]; then
        schema="giftd_ab_$RANDOM$RANDOM"
        PGOPTIONS=--client-min-messages=warning psql "$PG_SCHEMA_URL" -qc "CREATE SCHEMA $schema"
        env=(--server-env "GIFTD_LEDGER__POSTGRES_URL=$PG_SCHEMA_URL?options=-csearch_path%3D$schema")
    fi
    echo "== $NAME $1 run $3 ($(cut -d' ' -f1-3 /proc/loadavg))"
    "$LOAD" "${ARGS[@]}" --spawn-server "$2" "${env[@]}" --quiet \
        --json "$OUT/$NAME-$1-run$3.json" | grep -E "$METRIC  |integrity" || true
    if [ -n "$schema" ]; then
        PGOPTIONS=--client-min-messages=warning psql "$PG_SCHEMA_URL" -qc "DROP SCHEMA $schema CASCADE"
    fi
}

ARGS=("$@")
for i in $(seq 1 "$RUNS"); do
    run ref "$WORK/target/release/giftd" "$i"
    run head "$TARGET/release/giftd" "$i"
done

python3 - "$OUT" "$NAME" "$RUNS" "$METRIC" "$REF" <<'PY'
import json, statistics, sys
out, name, runs, metric, ref = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
med = {}
for side in ("ref", "head"):
    ds = [json.load(open(f"{out}/{name}-{side}-run{i}.json")) for i in range(1, runs + 1)]
    values = [d["metrics"][metric] for d in ds]
    med[side] = statistics.median(values)
    checks = {}
    for d in ds:
        for c in d["checks"]:
            if c["name"].endswith("p99"):
                checks.setdefault(c["name"], []).append(c["value"])
    p99 = ", ".join(f"{k} {statistics.median(v):.1f}" for k, v in sorted(checks.items()))
    label = ref if side == "ref" else "this tree"
    print(f"{name} {label:>9}: median {metric} {med[side]:.0f} {[round(v) for v in values]}; {p99}")
print(f"{name}: this tree / {ref} = {med['head'] / med['ref']:.3f}")
PY
