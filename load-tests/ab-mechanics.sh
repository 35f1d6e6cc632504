#!/usr/bin/env bash
# A/B: what the room mechanics (combos, goals, leaderboards, PK battles) cost the fan-out. The same
# `giftd-load fanout` (1 room x 1,000 viewers, RATE gifts/s (default 200) from 8 senders, each
# repeating one sticker, so combos run all the time) against giftd built at BASE (default
# f8a6db6, the last commit before any room mechanics) and against this tree, interleaved, RUNS
# runs each (default 3), DURATION seconds each (default 15). This tree's streamer keeps a goal running
# (--goal-coins 2000); the leaderboards update on every beat; and the room fights one PK battle
# after another against a rival room (--pk), each PK_MS long (default 5000), so battles start,
# score and end during the run. Prints the medians and the ratio.
# The base is built in a git worktree under target/ab-mechanics (removed afterwards).
# JSON reports in load-tests/results/issue11/pk/.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
DURATION=${DURATION:-15}
RATE=${RATE:-200}
BASE=${BASE:-f8a6db6}
PK_MS=${PK_MS:-5000}
OUT=load-tests/results/issue11/pk
TARGET=${CARGO_TARGET_DIR:-target}
LOAD=$TARGET/release/giftd-load
GIFTD=$TARGET/release/giftd
WORK=$TARGET/ab-mechanics
mkdir -p "$OUT"
cargo build --release -p giftd --bin giftd && cargo build --release -p giftd-load
if [ ! -x "$WORK/target/release/giftd" ]; then
    rm -rf "$WORK/src"
    git worktree add --detach "$WORK/src" "$BASE"
    CARGO_TARGET_DIR="$PWD/$WORK/target" cargo build --release --manifest-path "$WORK/src/Cargo.toml" \
        -p giftd --bin giftd
    git worktree remove --force "$WORK/src"
fi
BASE_GIFTD=$WORK/target/release/giftd

run() { # name, binary, goal coins, run, extra giftd-load arguments
    echo "== $1 run $4 ($(cut -d' ' -f1-3 /proc/loadavg))"
    "$LOAD" fanout --spawn-server "$2" --rooms 1 --viewers 1000 --senders-per-room 8 \
        --gifts-per-sec "$RATE" --duration-secs "$DURATION" --goal-coins "$3" --quiet ${5:-} \
        --json "$OUT/$1-$RATE-run$4.json" | grep -E "gift_deliveries_per_sec|viewer_events  |gift to last viewer" || true
}

for i in $(seq 1 "$RUNS"); do
    run base "$BASE_GIFTD" 0 "$i"
    run mechanics "$GIFTD" 2000 "$i" "--pk --server-env GIFTD_ROOMS__PK_DURATION_MS=$PK_MS"
done

python3 - "$OUT" "$RUNS" "$RATE" <<'PY'
import json, statistics, sys
out, runs, rate = sys.argv[1], int(sys.argv[2]), sys.argv[3]
med = {}
for name in ("base", "mechanics"):
    rates, p99s, events, lost = [], [], [], 0
    for i in range(1, runs + 1):
        d = json.load(open(f"{out}/{name}-{rate}-run{i}.json"))
        m = d["metrics"]
        rates.append(m["gift_deliveries_per_sec"])
        events.append(m["viewer_events"] / m["gift_deliveries"])
        lost += m["gift_deliveries_missing"] + m["viewer_seq_gaps"] + m["viewers_closed_early"]
        p99s.append(next(c["value"] for c in d["checks"] if c["name"] == "gift_to_last_viewer_latency_ms_p99"))
    med[name] = statistics.median(rates)
    print(f"{name:9}: median {med[name]:9.0f} gift deliveries/s, gift-to-last-viewer p99 median "
          f"{statistics.median(p99s):6.1f} ms, events per gift delivered {statistics.median(events):.3f}, "
          f"losses/gaps/drops {lost}, runs {[round(r) for r in rates]}")
print(f"mechanics / base gift deliveries/s: {med['mechanics'] / med['base']:.3f}")
PY
