#!/usr/bin/env bash
# Autobahn WebSocket conformance for giftd, driven by kosoku (a native runner of the Autobahn
# TestSuite cases, from PyPI).
#
# Builds giftd, serves the conformance echo endpoint (/echo: plain echo, production WebSocket
# settings) on a free loopback port, runs every Autobahn fuzzingclient case except 12.* and 13.*
# (permessage-deflate, which giftd does not negotiate), and compares each case's behaviour with
# tests/conformance/expected.json. Exits non-zero on any regression (a case worse than expected,
# or missing). Cases better than expected are listed so the file can be tightened.
#
#   scripts/conformance.sh            run and compare
#   scripts/conformance.sh --update   run and write the results as the new expected.json
#
# The 9.* cases send messages up to 16 MiB as fast as they can, so the run raises
# server.message_bytes_max to its maximum (16777216) and the inbound byte budget
# (server.inbound_bytes_per_sec, server.inbound_burst_bytes) to 1 GiB; everything else is the
# production WebSocket configuration. Environment: CONFORMANCE_VENV (default .venv-conformance),
# CONFORMANCE_OUT (default target/conformance), CONFORMANCE_PARALLELISM (default 4).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${CONFORMANCE_VENV:-.venv-conformance}
OUT=${CONFORMANCE_OUT:-target/conformance}
PARALLELISM=${CONFORMANCE_PARALLELISM:-4}
KOSOKU_VERSION=0.1.0
EXPECTED=tests/conformance/expected.json
UPDATE=0
[[ "${1:-}" == "--update" ]] && UPDATE=1

echo "== conformance: kosoku $KOSOKU_VERSION in $VENV"
if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('kosoku') != '$KOSOKU_VERSION')" 2>/dev/null; then
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "kosoku==$KOSOKU_VERSION"
fi

echo "== conformance: building giftd"
cargo build --quiet --bin giftd
BIN=target/debug/giftd

mkdir -p "$OUT"
rm -rf "$OUT/report"
WORK=$(mktemp -d)
free_port() {
    "$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
PORT=$(free_port)
ADMIN_PORT=$(free_port)
# giftd reads every GIFTD_* variable as configuration; start it from a clean slate.
for name in $(compgen -e | grep '^GIFTD_' || true); do unset "$name"; done
GIFTD_SERVER__LISTEN="127.0.0.1:$PORT" \
GIFTD_SERVER__ADMIN_LISTEN="127.0.0.1:$ADMIN_PORT" \
GIFTD_LEDGER__PATH="$WORK/giftd.db" \
GIFTD_SERVER__ECHO_ENDPOINT=true \
GIFTD_SERVER__MESSAGE_BYTES_MAX=16777216 \
GIFTD_SERVER__INBOUND_BURST_BYTES=1073741824 \
GIFTD_SERVER__INBOUND_BYTES_PER_SEC=1073741824 \
RUST_LOG=warn \
    "$BIN" serve >"$OUT/giftd.log" 2>&1 &
SERVER=$!
cleanup() {
    kill "$SERVER" 2>/dev/null || true
    wait "$SERVER" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# Wait (bounded) until the server answers.
for _ in $(seq 1 100); do
    if "$VENV/bin/python" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$ADMIN_PORT/healthz', timeout=1)" 2>/dev/null; then
        break
    fi
    if ! kill -0 "$SERVER" 2>/dev/null; then
        echo "giftd exited during start:" >&2
        cat "$OUT/giftd.log" >&2
        exit 1
    fi
    sleep 0.2
done

echo "== conformance: running the Autobahn cases against ws://127.0.0.1:$PORT/echo"
# kosoku exits 1 when any case fails; the comparison below decides.
timeout 1200 "$VENV/bin/kosoku" -m fuzzingclient -p "$PARALLELISM" -x '12.*' -x '13.*' \
    -o "$OUT/report" "ws://127.0.0.1:$PORT/echo" >"$OUT/kosoku.log" 2>&1 || true
if [[ ! -f "$OUT/report/index.json" ]]; then
    echo "kosoku wrote no report:" >&2
    tail -50 "$OUT/kosoku.log" >&2
    exit 1
fi
if ! kill -0 "$SERVER" 2>/dev/null; then
    echo "giftd died during the run:" >&2
    tail -50 "$OUT/giftd.log" >&2
    exit 1
fi

"$VENV/bin/python" - "$EXPECTED" "$OUT/report/index.json" "$UPDATE" <<'PY'
import json
import sys

expected_path, index_path, update = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
index = json.load(open(index_path))
(agent,) = index.keys()
actual = {
    case: {"behavior": r["behavior"], "behaviorClose": r["behaviorClose"]}
    for case, r in index[agent].items()
}


def key(case):
    return [int(p) for p in case.split(".")]


def write_expected(path, doc):
    """One line per case, so a diff shows exactly which cases changed."""
    cases = doc.pop("cases")
    lines = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in cases.items()]
    head = json.dumps(doc, indent=1)[:-2]
    with open(path, "w") as f:
        f.write(head + ',\n "cases": {\n' + ",\n".join(lines) + "\n }\n}\n")


if update:
    doc = {"suite": "autobahn fuzzingclient via kosoku 0.1.0, excluding 12.* and 13.*",
           "note": "behaviour of each case; scripts/conformance.sh fails on anything worse",
           "cases": {c: actual[c] for c in sorted(actual, key=key)}}
    write_expected(expected_path, doc)
    print(f"conformance: wrote {len(actual)} cases to {expected_path}")
    sys.exit(0)

# Lower is better. INFORMATIONAL is what informational cases always report.
RANK = {"OK": 0, "INFORMATIONAL": 0, "NON-STRICT": 1, "UNIMPLEMENTED": 2,
        "WRONG CODE": 3, "UNCLEAN": 3, "FAILED": 4}
expected = json.load(open(expected_path))["cases"]
regressions, improvements = [], []
for case in sorted(expected, key=key):
    want = expected[case]
    got = actual.get(case)
    if got is None:
        regressions.append(f"{case}: missing from the run")
        continue
    for field in ("behavior", "behaviorClose"):
        w, g = RANK.get(want[field], 9), RANK.get(got[field], 9)
        if g > w:
            regressions.append(f"{case}: {field} {got[field]} (expected {want[field]})")
        elif g < w:
            improvements.append(f"{case}: {field} {got[field]} (expected {want[field]})")
extra = sorted(set(actual) - set(expected), key=key)
passed = sum(1 for r in actual.values()
             if RANK.get(r["behavior"], 9) <= 1 and RANK.get(r["behaviorClose"], 9) <= 1)
print(f"conformance: {len(actual)} cases run, {passed} pass (OK, NON-STRICT or INFORMATIONAL), "
      f"{len(actual) - passed} fail; {len(regressions)} regressions against {expected_path}")
for line in improvements:
    print(f"  better than expected: {line}")
for case in extra:
    print(f"  not in expected.json: {case} {actual[case]}")
for line in regressions[:400]:
    print(f"  REGRESSION {line}")
sys.exit(1 if regressions else 0)
PY
