#!/usr/bin/env bash
# Runs BENCHMARKS.md's cluster comparison: one room, the same load, on 1, 2 and 3 local nodes
# spawned by giftd-load (a fresh PostgreSQL schema and NATS namespace per run, removed at the
# end), then, with LARGE=1, one larger run (3 nodes, 10,000 viewers). Needs NATS with JetStream (NATS_URL, default
# nats://127.0.0.1:4222) and PostgreSQL (PG_URL, default postgres://postgres@127.0.0.1:5432/test).
# Viewers and senders go round-robin over the nodes; the room runs on the first. The same
# --conns-per-worker and sender count for every size, so the generator's side is the same shape.
# Writes JSON reports to load-tests/results/cluster-<n>nodes.json and the console to
# load-tests/results/bench-cluster.log. Usage: load-tests/bench-cluster.sh [VIEWERS] [GIFTS_PER_SEC]
set -euo pipefail
cd "$(dirname "$0")/.."
VIEWERS=${1:-3000}
RATE=${2:-50}
NATS_URL=${NATS_URL:-nats://127.0.0.1:4222}
PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432/test}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
OUT=load-tests/results
LOAD=$TARGET_DIR/release/giftd-load
GIFTD=$TARGET_DIR/release/giftd
mkdir -p "$OUT"
cargo build --release -p giftd --bin giftd && cargo build --release -p giftd-load

quiet_machine() { # at most 2 minutes
  for _ in $(seq 1 60); do
    pgrep -x rustc >/dev/null || pgrep -f clippy-driver >/dev/null || return 0
    sleep 2
  done
}

run() { # name, nodes, viewers, rate
  quiet_machine
  echo "== $1: $2 node(s), $3 viewers, $4 gifts/s ($(cut -d' ' -f1-3 /proc/loadavg))" \
    | tee -a "$OUT/bench-cluster.log"
  "$LOAD" fanout --spawn-server "$GIFTD" --spawn-nodes "$2" --nats-url "$NATS_URL" \
    --postgres-url "$PG_URL" --rooms 1 --viewers "$3" --gifts-per-sec "$4" --senders-per-room 3 \
    --duration-secs 10 --conns-per-worker 1000 --target-p99-ms 50 --quiet \
    --json "$OUT/$1.json" | tee -a "$OUT/bench-cluster.log"
}

for n in 1 2 3; do
  run "cluster-${n}nodes" "$n" "$VIEWERS" "$RATE"
done
if [[ ${LARGE:-0} == 1 ]]; then
  run cluster-3nodes-10k 3 10000 "$RATE"
fi
