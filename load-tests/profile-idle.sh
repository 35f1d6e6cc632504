#!/usr/bin/env bash
# What an idle connection keeps on the server's heap (issue 13): giftd under
# `valgrind --tool=dhat` with CONNS (default 2,000) authenticated, idle connections from
# `giftd-load idle`, then the heap live at the peak grouped by allocation site and divided by
# CONNS (load-tests/dhat-live.py). Writes load-tests/results/profiles/issue13/dhat-idle-<CONNS>.txt.
# JOIN=1 makes every connection a viewer of one room instead (giftd-load fanout at 1 gift/s for
# 5 s), written to dhat-viewers-<CONNS>.txt. The heap is the system malloc's: RSS under jemalloc
# (the default build) is smaller, by its size classes (BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
CONNS=${CONNS:-2000}
TARGET=${CARGO_TARGET_DIR:-target}
OUT=load-tests/results/profiles/issue13
mkdir -p "$OUT"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
# valgrind sees the system's malloc, not jemalloc (the `jemalloc` feature, `Cargo.toml`): this
# profile's giftd is built without it, then the default build is put back in place.
cargo build --release -p giftd --bin giftd --no-default-features
cp "$TARGET/release/giftd" "$dir/giftd"
cargo build --release -p giftd --bin giftd && cargo build --release -p giftd-load
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
public=$(port) admin=$(port)
cat >"$dir/giftd.toml" <<TOML
[server]
listen = "127.0.0.1:$public"
admin_listen = "127.0.0.1:$admin"
handshake_timeout_ms = 60000
[ledger]
path = "$dir/giftd.db"
[limits.connection]
commands = { per_sec = 1000000000.0, burst = 1000000000 }
gifts = { per_sec = 1000000000.0, burst = 1000000000 }
[limits.user]
commands = { per_sec = 1000000000.0, burst = 1000000000 }
gifts = { per_sec = 1000000000.0, burst = 1000000000 }
TOML
RUST_LOG=warn valgrind --tool=dhat --dhat-out-file="$dir/dhat.json" \
    "$dir/giftd" serve --config "$dir/giftd.toml" 2>"$dir/valgrind.log" &
server=$!
for _ in $(seq 1 600); do
    curl -fs "http://127.0.0.1:$admin/healthz" >/dev/null && break
    sleep 0.2
done
if [ "${JOIN:-0}" = 1 ]; then
    name="dhat-viewers-$CONNS"
    "$TARGET/release/giftd-load" fanout --target "127.0.0.1:$public" --admin-target "127.0.0.1:$admin" \
        --server-pid "$server" --rooms 1 --viewers "$CONNS" --gifts-per-sec 1 --duration-secs 5 \
        --connect-timeout-ms 60000 --quiet >"$dir/load.txt" || true
else
    name="dhat-idle-$CONNS"
    "$TARGET/release/giftd-load" idle --target "127.0.0.1:$public" --admin-target "127.0.0.1:$admin" \
        --server-pid "$server" --connections "$CONNS" --hold-secs 5 --connect-timeout-ms 60000 \
        --quiet >"$dir/load.txt" || true
fi
kill -TERM "$server"
wait "$server" || true
# The raw profile stays in the temp dir's parent for a closer look; it is too big to keep here.
cp "$dir/dhat.json" "${TMPDIR:-/tmp}/$name.json"
python3 load-tests/dhat-live.py "$dir/dhat.json" "$CONNS" >"$OUT/$name.txt"
echo "== $OUT/$name.txt"
head -40 "$OUT/$name.txt"
