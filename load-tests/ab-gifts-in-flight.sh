#!/usr/bin/env bash
# A/B: one connection's gifts one at a time (server.gifts_in_flight_max = 1, as before gifts in
# flight) vs 16 committing at once (the default), interleaved, RUNS runs each (default 3), on the
# SQLite and the PostgreSQL ledger: `giftd-load gifts`, 64 rooms x 1 sender, each sender keeping
# 16 gifts in flight, closed loop for DURATION seconds (default 8). Prints the medians.
# Usage: load-tests/ab-gifts-in-flight.sh [sqlite] [pg]; PG (default
# postgres://postgres@127.0.0.1:5432/test). JSON reports in load-tests/results/issue8/.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
DURATION=${DURATION:-8}
PG=${PG:-postgres://postgres@127.0.0.1:5432/test}
OUT=load-tests/results/issue8
LOAD=${CARGO_TARGET_DIR:-target}/release/giftd-load
GIFTD=${CARGO_TARGET_DIR:-target}/release/giftd
mkdir -p "$OUT"
cargo build --release -p giftd --bin giftd && cargo build --release -p giftd-load

run() { # backend, in_flight, run
  local env=() schema=""
  if [ "$1" = pg ]; then
    schema="giftd_ab_$RANDOM$RANDOM"
    PGOPTIONS=--client-min-messages=warning psql "$PG" -qc "CREATE SCHEMA $schema"
    env=(--server-env GIFTD_LEDGER__BACKEND=postgres
      --server-env "GIFTD_LEDGER__POSTGRES_URL=$PG?options=-csearch_path%3D$schema")
  fi
  echo "== $1 gifts_in_flight_max=$2 run $3 ($(cut -d' ' -f1-3 /proc/loadavg))"
  "$LOAD" gifts --spawn-server "$GIFTD" --rooms 64 --senders-per-room 1 --pipeline 16 \
    --duration-secs "$DURATION" --quiet "${env[@]}" \
    --server-env "GIFTD_SERVER__GIFTS_IN_FLIGHT_MAX=$2" \
    --json "$OUT/$1-inflight$2-run$3.json" | grep -E "gifts_per_sec  |receipt  |integrity"
  if [ -n "$schema" ]; then PGOPTIONS=--client-min-messages=warning psql "$PG" -qc "DROP SCHEMA $schema CASCADE"; fi
}

[ $# -gt 0 ] || set -- sqlite pg
for backend in "$@"; do
  for i in $(seq 1 "$RUNS"); do
    for n in 1 16; do run "$backend" "$n" "$i"; done
  done
done

python3 - "$OUT" "$@" <<'PY'
import json, statistics, sys
out, backends = sys.argv[1], sys.argv[2:]
for b in backends:
    for n in (1, 16):
        runs = []
        i = 1
        while True:
            try:
                d = json.load(open(f"{out}/{b}-inflight{n}-run{i}.json"))
            except FileNotFoundError:
                break
            runs.append(d)
            i += 1
        rates = [r["metrics"]["gifts_per_sec"] for r in runs]
        p99 = [c["value"] for r in runs for c in r["checks"] if c["name"] == "receipt_latency_ms_p99"]
        print(f"{b:6} in_flight={n:2}: median {statistics.median(rates):8.0f} gifts/s, receipt p99 median {statistics.median(p99):6.1f} ms over {len(rates)} runs {[round(x) for x in rates]}")
PY
