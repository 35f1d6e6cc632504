#!/usr/bin/env bash
# Where a delivery's CPU goes (issue 13): `perf record` (cpu-clock sampling; this machine has no
# hardware counters) of the server under `giftd-load fanout`, 1 room x VIEWERS viewers (default
# 10,000) at RATE gifts/s (default 100), for giftd and for the floor (`giftd-floor`). Records
# RECORD_SECS (default 8) once every viewer is connected, then writes per server:
#   <server>-<viewers>-<rate>-self.txt    the top symbols by self time
#   <server>-<viewers>-<rate>-shares.txt  the samples grouped into syscalls and the network
#                                         stack, wake-ups and scheduling, copying, locking,
#                                         allocation, framing and encoding, other
# into load-tests/results/profiles/issue13/. Needs linux-perf (Debian) and root or
# kernel.perf_event_paranoid <= 1 for kernel symbols.
set -euo pipefail
cd "$(dirname "$0")/.."
VIEWERS=${VIEWERS:-10000}
RATE=${RATE:-100}
RECORD_SECS=${RECORD_SECS:-8}
OUT=load-tests/results/profiles/issue13
TARGET=${CARGO_TARGET_DIR:-target}
mkdir -p "$OUT"
cargo build --release -p giftd --bin giftd && cargo build --release -p giftd-load

profile() { # server binary name
    local server=$1 name="$1-$VIEWERS-$RATE"
    "$TARGET/release/giftd-load" fanout --spawn-server "$TARGET/release/$server" --rooms 1 \
        --viewers "$VIEWERS" --gifts-per-sec "$RATE" --senders-per-room 8 --conns-per-worker 5000 \
        --duration-secs $((RECORD_SECS + 12)) --quiet --json "$OUT/$name-run.json" >/dev/null &
    local load=$! pid=""
    # The spawned server is the generator's child running `serve`.
    for _ in $(seq 1 100); do
        pid=$(pgrep -P "$load" -f "$server serve" || true)
        [ -n "$pid" ] && break
        sleep 0.2
    done
    [ -n "$pid" ] || { echo "no $server process" >&2; kill "$load"; return 1; }
    # Wait until the viewers are connected (one descriptor each), then for sending to start.
    for _ in $(seq 1 300); do
        [ "$(ls /proc/"$pid"/fd 2>/dev/null | wc -l)" -ge "$VIEWERS" ] && break
        sleep 0.2
    done
    sleep 4
    perf record -F 999 -g -o "/tmp/perf-$name.data" -p "$pid" -- sleep "$RECORD_SECS" 2>/dev/null
    wait "$load" || true
    perf report -i "/tmp/perf-$name.data" --no-children --sort sym --stdio -g none 2>/dev/null \
        >"/tmp/perf-$name.txt" || true
    grep -v '^$' "/tmp/perf-$name.txt" | head -80 >"$OUT/$name-self.txt"
    python3 load-tests/profile-shares.py <"/tmp/perf-$name.txt" >"$OUT/$name-shares.txt"
    echo "== $server: $OUT/$name-shares.txt"
    cat "$OUT/$name-shares.txt"
}

for server in ${SERVERS:-giftd giftd-floor}; do
    profile "$server"
done
