#!/usr/bin/env bash
# A short coverage-guided fuzz run of every target in fuzz/, for CI (default 45 s each).
#
# Targets: decode (client messages, giftd::protocol::decode), auth_verify (tokens,
# Authenticator::verify) and config_toml (Config::from_toml). Each starts from its committed
# corpus in fuzz/corpus/<target>/ (read-only here: new inputs go to a scratch directory under
# fuzz/target, so CI does not churn the repository). Any crash fails the script; libFuzzer writes
# the input to fuzz/artifacts/<target>/ and prints how to reproduce it.
#
# cargo-fuzz needs a few nightly-only rustc flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain
# accept them. Sanitizer: none (giftd forbids unsafe code), with debug assertions on, so integer
# overflow panics are found too.
#
#   scripts/fuzz-smoke.sh                      every target, 45 s each
#   FUZZ_SECONDS=600 scripts/fuzz-smoke.sh decode
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

SECONDS_PER_TARGET=${FUZZ_SECONDS:-45}
if [[ $# -gt 0 ]]; then
    TARGETS=("$@")
else
    TARGETS=(decode auth_verify config_toml)
fi
export RUSTC_BOOTSTRAP=1
FLAGS=(--sanitizer none --release --debug-assertions)

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== fuzz: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

echo "== fuzz: building the targets"
cargo fuzz build "${FLAGS[@]}"

max_len() {
    case "$1" in
        decode) echo 16384 ;;      # server.message_bytes_max by default
        auth_verify) echo 4608 ;;  # a little over the 4096-byte token bound
        *) echo 8192 ;;
    esac
}

for target in "${TARGETS[@]}"; do
    scratch="target/smoke-corpus/$target"
    mkdir -p "$scratch" "corpus/$target"
    echo "== fuzz: $target for ${SECONDS_PER_TARGET}s"
    # The first directory receives new inputs; the committed corpus is only read.
    cargo fuzz run "${FLAGS[@]}" "$target" "$scratch" "corpus/$target" -- \
        -max_total_time="$SECONDS_PER_TARGET" -max_len="$(max_len "$target")" \
        -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 2>"target/smoke-$target.log" || {
        tail -40 "target/smoke-$target.log" >&2
        echo "fuzz: $target FAILED; the input is in fuzz/artifacts/$target/" >&2
        exit 1
    }
    grep -E "stat::number_of_executed_units|Done [0-9]+ runs" "target/smoke-$target.log" | tail -2 || true
done
echo "fuzz: ${#TARGETS[@]} passed, 0 failed"
