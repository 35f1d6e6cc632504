#!/usr/bin/env bash
# Runs the BENCHMARKS.md suite: every scenario RUNS times (default 3) against a freshly spawned
# release giftd, writing JSON reports and SVG plots to load-tests/results/. Before each run it
# waits (at most 2 minutes) for no compiler to be running, since server and generator share the
# machine's 2 cores. Usage: load-tests/bench.sh [idle|fanout-1k|fanout-10k|gifts|mixed ...]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
OUT=load-tests/results
LOAD=target/release/giftd-load
GIFTD=target/release/giftd
mkdir -p "$OUT"
cargo build --release -p giftd --bin giftd && cargo build --release -p giftd-load

quiet_machine() {
  for _ in $(seq 1 60); do
    pgrep -x rustc >/dev/null || pgrep -f clippy-driver >/dev/null || return 0
    sleep 2
  done
}

run() { # name, args...
  local name=$1; shift
  for i in $(seq 1 "$RUNS"); do
    quiet_machine
    echo "== $name run $i ($(cut -d' ' -f1-3 /proc/loadavg))" | tee -a "$OUT/bench.log"
    "$LOAD" "$@" --spawn-server "$GIFTD" --quiet \
      --json "$OUT/$name-run$i.json" --svg "$OUT/$name-run$i.svg" | tee -a "$OUT/bench.log" || true
  done
}

for s in "${@:-idle fanout-1k fanout-10k gifts mixed}"; do
  for scenario in $s; do
    case $scenario in
      idle) run idle-19k idle --connections 19000 --hold-secs 5 ;;
      fanout-1k) run fanout-1k fanout --rooms 1 --viewers 1000 --gifts-per-sec 200 \
          --senders-per-room 8 --duration-secs 10 --target-p99-ms 10 ;;
      fanout-10k) run fanout-10k fanout --rooms 1 --viewers 10000 --gifts-per-sec 55 \
          --senders-per-room 8 --duration-secs 10 --target-p99-ms 50 \
          --target-deliveries-per-sec 500000 ;;
      gifts) run gifts gifts --rooms 64 --senders-per-room 1 --duration-secs 10 --audit ;;
      mixed) run mixed mixed --rooms 10 --viewers 1000 --senders-per-room 5 \
          --commands-per-sec 500 --duration-secs 10 --audit ;;
      *) echo "unknown scenario $scenario" >&2; exit 64 ;;
    esac
  done
done
