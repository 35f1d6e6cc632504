#!/usr/bin/env bash
# Overload where the lag is uneven (issue 13): 1 room x 1,000 viewers, 1,000 gifts/s offered by 8
# senders with 16 gifts in flight each, the streamer keeping a goal running (as in
# ab-mechanics.sh at RATE=1000). The 2 cores cannot deliver 1,000,000 frames/s beside the
# generator, so giftd must shed load (room_busy, nothing charged) rather than drop viewers that
# read everything they are sent. RUNS runs (default 3) of DURATION seconds (default 15); prints
# per run the gifts committed per second, commands refused room_busy, viewers closed (4000 slow
# or 4002 resync) and deliveries per second. JSON reports in load-tests/results/issue13/.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
DURATION=${DURATION:-15}
OUT=load-tests/results/issue13
TARGET=${CARGO_TARGET_DIR:-target}
mkdir -p "$OUT"
cargo build --release -p giftd --bin giftd && cargo build --release -p giftd-load
for i in $(seq 1 "$RUNS"); do
    echo "== run $i ($(cut -d' ' -f1-3 /proc/loadavg))"
    "$TARGET/release/giftd-load" fanout --spawn-server "$TARGET/release/giftd" --rooms 1 --viewers 1000 \
        --senders-per-room 8 --gifts-per-sec 1000 --duration-secs "$DURATION" --goal-coins 2000 --quiet \
        --json "$OUT/overload-1k-1000-run$i.json" >/dev/null || true
done
python3 - "$OUT" "$RUNS" <<'PY'
import json, sys
out, runs = sys.argv[1], int(sys.argv[2])
print("| run | gifts committed/s | refused room_busy | viewers closed | deliveries/s | gift to last viewer p99 ms |")
print("| ---: | ---: | ---: | ---: | ---: | ---: |")
for i in range(1, runs + 1):
    d = json.load(open(f"{out}/overload-1k-1000-run{i}.json"))
    m = d["metrics"]
    p99 = d["latency"]["gift to last viewer"]["latency_us_p99"] / 1000
    print(f"| {i} | {m['gifts_per_sec']:.0f} | {m['commands_refused_room_busy']:.0f} | "
          f"{m['viewers_closed_early']:.0f} | {m['gift_deliveries_per_sec']:,.0f} | {p99:.0f} |")
PY
