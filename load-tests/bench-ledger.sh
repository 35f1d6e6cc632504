#!/usr/bin/env bash
# The ledger backends under `giftd-load gifts` (BENCHMARKS.md, "Ledger backends"): SQLite on one
# node, PostgreSQL on one node, and PostgreSQL with 2 or 3 nodes (one generator per node, each spawning its own
# node on the same schema, run at once). Each PostgreSQL run gets a fresh schema, audited with
# `giftd audit --postgres` and dropped afterwards.
# Usage: load-tests/bench-ledger.sh [sqlite|pg1|pg2|pg3 ...]; RUNS (default 3), PG (server URL,
# default postgres://postgres@127.0.0.1:5432/test), DURATION (seconds, default 10).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
PG=${PG:-postgres://postgres@127.0.0.1:5432/test}
DURATION=${DURATION:-10}
OUT=load-tests/results
LOAD=${CARGO_TARGET_DIR:-target}/release/giftd-load
GIFTD=${CARGO_TARGET_DIR:-target}/release/giftd
mkdir -p "$OUT"
cargo build --release -p giftd --bin giftd && cargo build --release -p giftd-load

GIFTS=(gifts --rooms 64 --senders-per-room 1 --duration-secs "$DURATION" --quiet)

quiet_machine() {
  for _ in $(seq 1 60); do
    pgrep -x rustc >/dev/null || pgrep -f clippy-driver >/dev/null || return 0
    sleep 2
  done
}

schema_url() { # schema
  echo "$PG?options=-csearch_path%3D$1"
}

pg_run() { # name, nodes, run
  local name=$1 nodes=$2 i=$3 schema="giftd_bench_$RANDOM$RANDOM"
  psql "$PG" -qc "CREATE SCHEMA $schema"
  local pids=()
  for n in $(seq 1 "$nodes"); do
    "$LOAD" "${GIFTS[@]}" --spawn-server "$GIFTD" \
      --server-env GIFTD_LEDGER__BACKEND=postgres \
      --server-env "GIFTD_LEDGER__POSTGRES_URL=$(schema_url "$schema")" \
      --json "$OUT/$name-run$i-node$n.json" | tee -a "$OUT/bench-ledger.log" &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || true; done
  "$GIFTD" audit --postgres "$(schema_url "$schema")" | tee -a "$OUT/bench-ledger.log"
  psql "$PG" -qc "DROP SCHEMA $schema CASCADE"
}

[ $# -gt 0 ] || set -- sqlite pg1 pg2
for scenario in "$@"; do
  for i in $(seq 1 "$RUNS"); do
    quiet_machine
    echo "== $scenario run $i ($(cut -d' ' -f1-3 /proc/loadavg))" | tee -a "$OUT/bench-ledger.log"
    case $scenario in
      sqlite) "$LOAD" "${GIFTS[@]}" --spawn-server "$GIFTD" --audit \
          --json "$OUT/ledger-sqlite-run$i.json" | tee -a "$OUT/bench-ledger.log" || true ;;
      pg1) pg_run ledger-pg1 1 "$i" ;;
      pg2) pg_run ledger-pg2 2 "$i" ;;
      pg3) pg_run ledger-pg3 3 "$i" ;;
      *) echo "unknown scenario $scenario" >&2; exit 64 ;;
    esac
  done
done
