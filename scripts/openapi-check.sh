#!/usr/bin/env bash
# Checks docs/openapi.yaml against a live giftd with schemathesis (from PyPI, in a virtualenv this
# script creates, as scripts/conformance.sh does for kosoku).
#
# Builds giftd, starts it on free loopback ports with a throwaway ledger and the demo's dev tools
# on, checks that it serves the same openapi.yaml as the file, then runs schemathesis twice, each
# bounded in time: the public and demo operations against the public listener, the admin ones
# against the admin listener; the admin token (the development default) goes where the
# description asks for it. Every check is on: no 5xx, only documented
# statuses, content types and bodies, bad input refused and good input accepted
# (scripts/openapi-check.toml holds the few settings per operation). Exits non-zero
# on any failure, or if giftd dies.
#
# Environment: OPENAPI_VENV (default .venv-openapi), OPENAPI_OUT (default target/openapi-check),
# OPENAPI_MAX_SECS (default 60: the time budget of each of the two runs).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${OPENAPI_VENV:-.venv-openapi}
OUT=${OPENAPI_OUT:-target/openapi-check}
MAX_SECS=${OPENAPI_MAX_SECS:-60}
SCHEMATHESIS_VERSION=4.32.5
SPEC=docs/openapi.yaml

echo "== openapi: schemathesis $SCHEMATHESIS_VERSION in $VENV"
if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('schemathesis') != '$SCHEMATHESIS_VERSION')" 2>/dev/null; then
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

echo "== openapi: building giftd"
cargo build --quiet --bin giftd
BIN=${CARGO_TARGET_DIR:-target}/debug/giftd

mkdir -p "$OUT"
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
GIFTD_DEMO__DEV_TOOLS=true \
RUST_LOG=warn \
    "$BIN" serve >"$OUT/giftd.log" 2>&1 &
SERVER=$!
cleanup() {
    kill "$SERVER" 2>/dev/null || true
    wait "$SERVER" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

for _ in $(seq 1 100); do
    if "$VENV/bin/python" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$ADMIN_PORT/readyz', timeout=1)" 2>/dev/null; then
        break
    fi
    if ! kill -0 "$SERVER" 2>/dev/null; then
        echo "giftd exited during start:" >&2
        cat "$OUT/giftd.log" >&2
        exit 1
    fi
    sleep 0.2
done

echo "== openapi: giftd serves $SPEC as it is"
"$VENV/bin/python" - "$SPEC" "http://127.0.0.1:$PORT/openapi.yaml" <<'PY'
import sys
import urllib.request

served = urllib.request.urlopen(sys.argv[2], timeout=5).read()
if served != open(sys.argv[1], "rb").read():
    sys.exit(f"{sys.argv[2]} differs from {sys.argv[1]}: rebuild giftd")
PY

status=0
run() {
    local name=$1 url=$2
    shift 2
    echo "== openapi: $name operations against $url (at most ${MAX_SECS}s)"
    # `timeout` bounds the run even if a request hangs; schemathesis's own budget ends it first.
    timeout $((MAX_SECS + 120)) "$VENV/bin/schemathesis" --no-color \
        --config-file scripts/openapi-check.toml run "$SPEC" --url "$url" \
        --checks all --max-time "$MAX_SECS" --request-timeout 10 --workers 2 \
        --generation-database none \
        --report junit --report-dir "$OUT/$name" "$@" || status=1
    if ! kill -0 "$SERVER" 2>/dev/null; then
        echo "giftd died during the $name run:" >&2
        tail -50 "$OUT/giftd.log" >&2
        exit 1
    fi
}
run public "http://127.0.0.1:$PORT" --include-tag public --include-tag demo
run admin "http://127.0.0.1:$ADMIN_PORT" --include-tag admin
exit $status
