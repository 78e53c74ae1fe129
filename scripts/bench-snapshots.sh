#!/usr/bin/env bash
# Benchmarks strata-snapshotd (drivers overlay and vfs) side by side with containerd 1.6's own
# overlayfs and native snapshotters, all driven by the same client (snapbench) over the
# snapshots gRPC API, and prints a Markdown report (machine, commands, medians, ratios).
#
# It builds strata-snapshotd and snapbench in release mode, starts strata-snapshotd and a
# private containerd (own root, state and socket; CRI disabled), each with its data under
# BENCH_DIR on the same filesystem, runs snapbench against the four endpoints one after
# another, then stops both daemons and removes their data.
#
# Usage: scripts/bench-snapshots.sh [REPORT.md]       (as root; default report: stdout only)
# Env:   BENCH_DIR (default /var/tmp/strata-bench-<pid>; JSON results are kept in it)
#        SECONDS_PER_ROUND=5 ROUNDS=3 PREPARES=50   (passed to snapbench)
set -euo pipefail
cd "$(dirname "$0")/.."
REPORT=${1:-}
BENCH_DIR=${BENCH_DIR:-/var/tmp/strata-bench-$$}
SECS=${SECONDS_PER_ROUND:-5}
ROUNDS=${ROUNDS:-3}
PREPARES=${PREPARES:-50}
[ "$(id -u)" = 0 ] || { echo "bench-snapshots.sh must run as root (it mounts snapshots)" >&2; exit 1; }
for p in containerd ctr; do
  command -v "$p" >/dev/null || { echo "$p not found: install containerd and runc: apt-get install containerd runc" >&2; exit 1; }
done

echo "==> building (release): strata-snapshotd, snapbench" >&2
cargo build --release -p strata-snapshotd -p strata-tests --bin strata-snapshotd --bin snapbench >&2
TARGET=${CARGO_TARGET_DIR:-target}
SNAPSHOTD=$TARGET/release/strata-snapshotd
SNAPBENCH=$TARGET/release/snapbench

mkdir -p "$BENCH_DIR/results"
STRATA_PID="" CTRD_PID=""
cleanup() {
  [ -n "$CTRD_PID" ] && kill "$CTRD_PID" 2>/dev/null && wait "$CTRD_PID" 2>/dev/null
  [ -n "$STRATA_PID" ] && kill "$STRATA_PID" 2>/dev/null && wait "$STRATA_PID" 2>/dev/null
  # anything the benchmark left mounted below BENCH_DIR, deepest first
  awk -v p="$BENCH_DIR" '$2 == p || index($2, p "/") == 1 {print $2}' /proc/self/mounts | sort -r |
    while read -r m; do umount "$m" 2>/dev/null || umount -l "$m"; done
  rm -rf "$BENCH_DIR/strata" "$BENCH_DIR/containerd"
}
trap cleanup EXIT

wait_socket() {  # wait_socket <pid> <socket> <log>
  for _ in $(seq 200); do
    [ -S "$2" ] && return 0
    kill -0 "$1" 2>/dev/null || { echo "daemon exited; log:" >&2; cat "$3" >&2; return 1; }
    sleep 0.05
  done
  echo "timeout waiting for $2" >&2; return 1
}

echo "==> starting strata-snapshotd and containerd under $BENCH_DIR" >&2
mkdir -p "$BENCH_DIR/strata" "$BENCH_DIR/containerd"
"$SNAPSHOTD" --root "$BENCH_DIR/strata/root" --address "unix://$BENCH_DIR/strata/snapshotd.sock" \
  --driver overlay --driver vfs >"$BENCH_DIR/strata/log" 2>&1 &
STRATA_PID=$!
wait_socket "$STRATA_PID" "$BENCH_DIR/strata/snapshotd.sock" "$BENCH_DIR/strata/log"

C=$BENCH_DIR/containerd
cat >"$C/config.toml" <<TOML
version = 2
root = "$C/root"
state = "$C/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$C/containerd.sock"
[ttrpc]
  address = "$C/containerd.sock.ttrpc"
[debug]
  address = "$C/debug.sock"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$C/opt"
TOML
containerd --config "$C/config.toml" >"$C/log" 2>&1 &
CTRD_PID=$!
wait_socket "$CTRD_PID" "$C/containerd.sock" "$C/log"
for _ in $(seq 100); do ctr -a "$C/containerd.sock" version >/dev/null 2>&1 && break; sleep 0.1; done

COMMON=(--seconds "$SECS" --rounds "$ROUNDS" --prepares "$PREPARES")
run() {  # run <label> <snapbench args...>
  local label=$1; shift
  echo "==> $label: snapbench $* ${COMMON[*]} (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
  "$SNAPBENCH" "$@" "${COMMON[@]}" --label "$label" --json "$BENCH_DIR/results/$label.json" >&2
}
run strata-overlay       --address "unix://$BENCH_DIR/strata/snapshotd.sock" --snapshotter overlay
run strata-vfs           --address "unix://$BENCH_DIR/strata/snapshotd.sock" --snapshotter vfs
run containerd-overlayfs --address "unix://$C/containerd.sock" --snapshotter overlayfs --namespace snapbench
run containerd-native    --address "unix://$C/containerd.sock" --snapshotter native --namespace snapbench

fs_dev=$(df -P "$BENCH_DIR" | awk 'NR==2 {print $1}')
{
  echo "## Run of $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "- CPUs: $(nproc) ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'))"
  echo "- memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
  echo "- kernel: $(uname -r)"
  echo "- disk: $fs_dev, $(df -PT "$BENCH_DIR" | awk 'NR==2 {print $2}'), $(df -Ph "$BENCH_DIR" | awk 'NR==2 {print $2}') (BENCH_DIR=$BENCH_DIR)"
  echo "- containerd: $(containerd --version | awk '{print $3}'); strata-snapshotd: release build of $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "- load average when the report was written (1/5/15 min): $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "- snapbench: --seconds $SECS --rounds $ROUNDS --prepares $PREPARES (medians of rounds)"
  echo
  "$SNAPBENCH" --report "$BENCH_DIR"/results/strata-overlay.json "$BENCH_DIR"/results/strata-vfs.json \
    "$BENCH_DIR"/results/containerd-overlayfs.json "$BENCH_DIR"/results/containerd-native.json
} | tee "$BENCH_DIR/results/report.md"
if [ -n "$REPORT" ]; then cp "$BENCH_DIR/results/report.md" "$REPORT"; fi
echo "JSON results: $BENCH_DIR/results" >&2
