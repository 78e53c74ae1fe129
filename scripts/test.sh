#!/usr/bin/env bash
# The Strata test command: installs the Debian packages the tests need (scripts/deps.sh),
# builds the whole workspace with every target, then runs every test of every crate.
# Tests run for real (mounts, loop devices, containerd, runc), so this must run as root.
#
# Usage: scripts/test.sh [extra args for `cargo test`, e.g. a test name filter]
# Env:   CARGO_TARGET_DIR (cargo's own), STRATA_SKIP_DEPS=1 to skip scripts/deps.sh,
#        STRATA_TEST_LOG (default: $TMPDIR/strata-test-<pid>.log) for the full output.
# Exit status: 0 only when the build and every test pass.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
LOG=${STRATA_TEST_LOG:-${TMPDIR:-/tmp}/strata-test-$$.log}
START=$(date +%s)
: > "$LOG"

step() { printf '\n==> %s\n' "$*" | tee -a "$LOG"; }
elapsed() { echo "$(( $(date +%s) - START ))s"; }
fail() {
  printf '\nFAILED: %s (after %s)\nfull log: %s\n' "$1" "$(elapsed)" "$LOG"
  exit 1
}

if [ "$(id -u)" != 0 ]; then
  echo "scripts/test.sh must run as root: the tests mount filesystems and run containerd and runc" >&2
  exit 1
fi

if [ "${STRATA_SKIP_DEPS:-0}" != 1 ]; then
  step "dependencies (scripts/deps.sh)"
  "$ROOT/scripts/deps.sh" 2>&1 | tee -a "$LOG" || fail "scripts/deps.sh"
fi

LOCKED=()
if git -C "$ROOT" ls-files --error-unmatch Cargo.lock >/dev/null 2>&1; then
  LOCKED=(--locked)
fi

step "build: cargo build --workspace --all-targets ${LOCKED[*]}"
cargo build --workspace --all-targets "${LOCKED[@]}" 2>&1 | tee -a "$LOG"
[ "${PIPESTATUS[0]}" = 0 ] || fail "cargo build"
BUILD_TIME=$(elapsed)

step "test: cargo test --workspace ${LOCKED[*]} --no-fail-fast $*"
TEST_OUT=$(mktemp "${TMPDIR:-/tmp}/strata-test-out.XXXXXX")
cargo test --workspace "${LOCKED[@]}" --no-fail-fast "$@" 2>&1 | tee "$TEST_OUT" | tee -a "$LOG"
TEST_RC=${PIPESTATUS[0]}

# Summary: one line per test binary, then the failed tests by name.
passed=0; failed=0; ignored=0
echo
echo "==> summary"
current=""
while IFS= read -r line; do
  case $line in
    *"Running "*|*"Doc-tests "*)
      # "Running tests/x.rs (target/debug/deps/x-0123abcd)" -> "x: tests/x.rs"
      src=$(sed -E 's/^ *(Running|Doc-tests) +//; s/ \(.*//' <<<"$line")
      bin=$(sed -nE 's/.*\((.*)\)$/\1/p' <<<"$line"); bin=$(basename "${bin:-doc}" | sed -E 's/-[0-9a-f]{16}$//')
      current="$bin: $src" ;;
    "test result:"*)
      p=$(sed -nE 's/.* ([0-9]+) passed.*/\1/p' <<<"$line"); f=$(sed -nE 's/.* ([0-9]+) failed.*/\1/p' <<<"$line")
      i=$(sed -nE 's/.* ([0-9]+) ignored.*/\1/p' <<<"$line")
      passed=$((passed + ${p:-0})); failed=$((failed + ${f:-0})); ignored=$((ignored + ${i:-0}))
      [ "${p:-0}${f:-0}" = 00 ] || printf '  %-60s %4s passed %4s failed\n' "${current:0:60}" "${p:-0}" "${f:-0}" ;;
  esac
done < "$TEST_OUT"
FAILED_NAMES=$(grep -E '^test .* \.\.\. FAILED$' "$TEST_OUT" | sed -E 's/^test (.*) \.\.\. FAILED$/\1/' || true)
rm -f "$TEST_OUT"
echo "  total: $passed passed, $failed failed, $ignored ignored (build $BUILD_TIME, total $(elapsed))"
if [ -n "$FAILED_NAMES" ]; then
  echo "  failed tests:"
  sed 's/^/    /' <<<"$FAILED_NAMES"
fi
if [ "$TEST_RC" != 0 ] || [ "$failed" != 0 ]; then
  fail "cargo test (exit $TEST_RC)"
fi
echo "OK: all tests passed; full log: $LOG"
