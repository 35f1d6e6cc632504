#!/usr/bin/env bash
# giftd against the floor (issue 13): the same `giftd-load fanout` runs against giftd and against
# `giftd-floor` (load-tests/src/floor/: the cheapest server for the job, which writes one
# ready-made frame per event to every socket and keeps no money), interleaved, RUNS runs each
# (default 3), DURATION seconds each (default 10). SCENARIOS picks from:
#   1k-200    1 room x 1,000 viewers, 200 gifts/s (8 senders)
#   10k-1     1 room x 10,000 viewers, 1 gift/s (1 sender)
#   10k-100   1 room x 10,000 viewers, 100 gifts/s (8 senders)
#   10k-200   1 room x 10,000 viewers, 200 gifts/s (8 senders)
#   100x100   100 rooms x 100 viewers, 20 gifts/s each (1 sender per room)
#   19k-50    1 room x 19,000 viewers on one node, 50 gifts/s (8 senders; not in the default set)
# Prints per scenario the medians and giftd's ratios to the floor. JSON reports in
# load-tests/results/issue13/floor/.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
SCENARIOS=${SCENARIOS:-"1k-200 10k-1 10k-100 10k-200 100x100"}
OUT=load-tests/results/issue13/floor
TARGET=${CARGO_TARGET_DIR:-target}
LOAD=$TARGET/release/giftd-load
mkdir -p "$OUT"
cargo build --release -p giftd --bin giftd && cargo build --release -p giftd-load

args_of() {
    case "$1" in
        1k-200) echo "--rooms 1 --viewers 1000 --gifts-per-sec 200 --senders-per-room 8" ;;
        10k-1) echo "--rooms 1 --viewers 10000 --gifts-per-sec 1 --senders-per-room 1 --conns-per-worker 5000" ;;
        10k-100) echo "--rooms 1 --viewers 10000 --gifts-per-sec 100 --senders-per-room 8 --conns-per-worker 5000" ;;
        10k-200) echo "--rooms 1 --viewers 10000 --gifts-per-sec 200 --senders-per-room 8 --conns-per-worker 5000" ;;
        19k-50) echo "--rooms 1 --viewers 19000 --gifts-per-sec 50 --senders-per-room 8 --conns-per-worker 5000" ;;
        100x100) echo "--rooms 100 --viewers 10000 --gifts-per-sec 2000 --senders-per-room 1 --conns-per-worker 5000" ;;
        *) echo "unknown scenario $1" >&2; exit 64 ;;
    esac
}

# SUMMARY_ONLY=1 prints the tables from the JSON reports already there.
for s in $SCENARIOS; do
    [ -n "${SUMMARY_ONLY:-}" ] && break
    for i in $(seq 1 "$RUNS"); do
        for server in giftd giftd-floor; do
            echo "== $s $server run $i ($(cut -d' ' -f1-3 /proc/loadavg))"
            # shellcheck disable=SC2046
            "$LOAD" fanout --spawn-server "$TARGET/release/$server" $(args_of "$s") \
                --duration-secs "$DURATION" --quiet --json "$OUT/$s-$server-run$i.json" \
                | grep -E "gift_deliveries_per_sec|gift to last viewer|integrity" || true
        done
    done
done

python3 - "$OUT" "$RUNS" "$SCENARIOS" <<'PY'
import json, statistics, sys
out, runs, scenarios = sys.argv[1], int(sys.argv[2]), sys.argv[3].split()
def med(xs):
    return statistics.median(xs) if xs else float("nan")
print("| scenario | server | deliveries/s | gift to last viewer p50 / p99 ms | receipt to last viewer p99 ms "
      "| server CPU µs/delivery | client CPU µs/delivery | lost / gaps / dropped |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
summary = {}
for s in scenarios:
    for server in ("giftd", "giftd-floor"):
        rows = [json.load(open(f"{out}/{s}-{server}-run{i}.json")) for i in range(1, runs + 1)]
        m = [r["metrics"] for r in rows]
        lat = lambda name, q: med([r["latency"][name][q] / 1000 for r in rows])
        d = {
            "rate": med([x["gift_deliveries_per_sec"] for x in m]),
            "runs": [round(x["gift_deliveries_per_sec"]) for x in m],
            "p50": lat("gift to last viewer", "latency_us_p50"),
            "p99": lat("gift to last viewer", "latency_us_p99"),
            "r99": lat("receipt to last viewer", "latency_us_p99"),
            "scpu": med([x.get("server_cpu_us_per_delivery", float("nan")) for x in m]),
            "ccpu": med([x.get("client_cpu_us_per_delivery", float("nan")) for x in m]),
            "lost": sum(x["gift_deliveries_missing"] for x in m),
            "gaps": sum(x["viewer_seq_gaps"] for x in m),
            "drop": sum(x["viewers_closed_early"] for x in m),
        }
        summary[(s, server)] = d
        print(f"| {s} | {server} | {d['rate']:,.0f} ({' / '.join(f'{r:,}' for r in d['runs'])}) "
              f"| {d['p50']:.1f} / {d['p99']:.1f} | {d['r99']:.1f} | {d['scpu']:.2f} | {d['ccpu']:.2f} "
              f"| {d['lost']:.0f} / {d['gaps']:.0f} / {d['drop']:.0f} |")
print()
print("| scenario | giftd ÷ floor deliveries/s | gift to last viewer p99 | receipt to last viewer p99 | server CPU per delivery |")
print("| --- | ---: | ---: | ---: | ---: |")
for s in scenarios:
    g, f = summary[(s, "giftd")], summary[(s, "giftd-floor")]
    print(f"| {s} | {g['rate'] / f['rate']:.3f} | {g['p99'] / f['p99']:.2f} | {g['r99'] / f['r99']:.2f} "
          f"| {g['scpu'] / f['scpu']:.2f} |")
PY
