#!/usr/bin/env bash
# A/B: the same giftd binary with the bounded send buffer (64 KiB default) vs a 4 MiB one,
# interleaved, 3 runs each, fanout 1 room x 1,000 viewers at 200 gifts/s for 10 s.
cd "$(dirname "$0")/.."
OUT=load-tests/results/issue7
mkdir -p "$OUT"
cargo build --release -p giftd --bin giftd && cargo build --release -p giftd-load
for i in 1 2 3; do
  for sndbuf in 65536 4194304; do
    echo "== sndbuf $sndbuf run $i ($(cut -d' ' -f1-3 /proc/loadavg))"
    target/release/giftd-load fanout --rooms 1 --viewers 1000 --gifts-per-sec 200 --senders-per-room 8 \
      --duration-secs 10 --spawn-server target/release/giftd --quiet \
      --server-env GIFTD_SERVER__SOCKET_SEND_BUFFER_BYTES=$sndbuf \
      --json "$OUT/ab-$sndbuf-$i.json" > /dev/null 2>&1 || echo "run failed"
  done
done
