#!/usr/bin/env bash
# Benchmarks the blockcow driver and prints a Markdown report (machine, commands, medians, ratios):
# - blockbench create / io / space (snapshot creation time; fio through ext4 on a blockcow
#   device beside ext4 on a loop device over a plain file, in one run; pool space of ten
#   containers of one 500 MiB image);
# - the containerd benchsuite workload (snapbench) against strata-snapshotd serving blockcow,
#   overlay and vfs from one daemon.
#
# blockcow runs with its default pool settings in the daemon (100 GiB sparse data file, 10 GiB
# base device): a storage option without a driver prefix would go to overlay and vfs too.
#
# Everything is built in release mode and made under BENCH_DIR (same disk for all), which is
# removed at the end.
#
# Usage: scripts/bench-blockcow.sh [REPORT.md]        (as root; default report: stdout only)
# Env:   BENCH_DIR (default /var/tmp/strata-blockbench-<pid>)
#        IO_REPS=3 IO_FILE_MIB=256 IO_SECONDS=5 CREATE_SAMPLES=50      (blockbench)
#        SECONDS_PER_ROUND=5 ROUNDS=3 PREPARES=50                      (snapbench)
#        PARTS="create io space snap"                                  (which parts to run)
set -euo pipefail
cd "$(dirname "$0")/.."
REPORT=${1:-}
BENCH_DIR=${BENCH_DIR:-/var/tmp/strata-blockbench-$$}
IO_REPS=${IO_REPS:-3}
IO_FILE_MIB=${IO_FILE_MIB:-256}
IO_SECONDS=${IO_SECONDS:-5}
CREATE_SAMPLES=${CREATE_SAMPLES:-50}
SECS=${SECONDS_PER_ROUND:-5}
ROUNDS=${ROUNDS:-3}
PREPARES=${PREPARES:-50}
PARTS=" ${PARTS:-create io space snap} "
[ "$(id -u)" = 0 ] || { echo "bench-blockcow.sh must run as root (FUSE, loop devices, mounts)" >&2; exit 1; }
command -v fio >/dev/null || { echo "fio not found: apt-get install fio" >&2; exit 1; }
command -v mkfs.ext4 >/dev/null || { echo "mkfs.ext4 not found: apt-get install e2fsprogs" >&2; exit 1; }
command -v losetup >/dev/null || { echo "losetup not found: apt-get install util-linux" >&2; exit 1; }

echo "==> building (release): strata-snapshotd, blockbench, snapbench" >&2
cargo build --release -p strata-snapshotd -p strata-tests --bin strata-snapshotd --bin blockbench --bin snapbench >&2
TARGET=${CARGO_TARGET_DIR:-target}
SNAPSHOTD=$TARGET/release/strata-snapshotd
BLOCKBENCH=$TARGET/release/blockbench
SNAPBENCH=$TARGET/release/snapbench

mkdir -p "$BENCH_DIR/results"
STRATA_PID=""
cleanup() {
  if [ -n "$STRATA_PID" ]; then kill "$STRATA_PID" 2>/dev/null && wait "$STRATA_PID" 2>/dev/null; fi
  # anything left mounted below BENCH_DIR, deepest first
  awk -v p="$BENCH_DIR" '$2 == p || index($2, p "/") == 1 {print $2}' /proc/self/mounts | sort -r |
    while read -r m; do umount "$m" 2>/dev/null || umount -l "$m"; done
  rm -rf "$BENCH_DIR/strata" "$BENCH_DIR/blockbench"
}
trap cleanup EXIT

OUT=$BENCH_DIR/results/blockbench.md
: >"$OUT"
bb() {  # bb <blockbench args...>
  echo "==> blockbench $* (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
  echo "Command: \`blockbench --dir \$BENCH_DIR/blockbench $*\`" >>"$OUT"
  echo >>"$OUT"
  "$BLOCKBENCH" --dir "$BENCH_DIR/blockbench" "$@" >>"$OUT"
}
part() { [[ $PARTS == *" $1 "* ]]; }
part create && bb create --samples "$CREATE_SAMPLES"
part io && bb io --reps "$IO_REPS" --file-mib "$IO_FILE_MIB" --seconds "$IO_SECONDS"
part space && bb space

if part snap; then
echo "==> starting strata-snapshotd (blockcow, overlay, vfs) under $BENCH_DIR" >&2
mkdir -p "$BENCH_DIR/strata"
"$SNAPSHOTD" --root "$BENCH_DIR/strata/root" --address "unix://$BENCH_DIR/strata/snapshotd.sock" \
  --driver blockcow --driver overlay --driver vfs >"$BENCH_DIR/strata/log" 2>&1 &
STRATA_PID=$!
for _ in $(seq 600); do
  [ -S "$BENCH_DIR/strata/snapshotd.sock" ] && break
  kill -0 "$STRATA_PID" 2>/dev/null || { echo "strata-snapshotd exited; log:" >&2; cat "$BENCH_DIR/strata/log" >&2; exit 1; }
  sleep 0.05
done
[ -S "$BENCH_DIR/strata/snapshotd.sock" ] || { echo "strata-snapshotd did not listen" >&2; exit 1; }

COMMON=(--seconds "$SECS" --rounds "$ROUNDS" --prepares "$PREPARES")
for d in blockcow overlay vfs; do
  echo "==> strata-$d: snapbench --snapshotter $d ${COMMON[*]} (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
  "$SNAPBENCH" --address "unix://$BENCH_DIR/strata/snapshotd.sock" --snapshotter "$d" "${COMMON[@]}" \
    --label "strata-$d" --json "$BENCH_DIR/results/strata-$d.json" >&2
done
fi

fs_dev=$(df -P "$BENCH_DIR" | awk 'NR==2 {print $1}')
{
  echo "### Run of $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "- CPUs: $(nproc) ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'))"
  echo "- memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
  echo "- kernel: $(uname -r)"
  echo "- disk: $fs_dev, $(df -PT "$BENCH_DIR" | awk 'NR==2 {print $2}') (BENCH_DIR=$BENCH_DIR)"
  echo "- fio: $(fio --version); build: release of the work tree at $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "- load average when the report was written (1/5/15 min): $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "- command: \`scripts/bench-blockcow.sh\` (IO_REPS=$IO_REPS IO_FILE_MIB=$IO_FILE_MIB IO_SECONDS=$IO_SECONDS CREATE_SAMPLES=$CREATE_SAMPLES SECONDS_PER_ROUND=$SECS ROUNDS=$ROUNDS PREPARES=$PREPARES)"
  echo
  cat "$OUT"
  if part snap; then
    echo "### containerd benchsuite workload (snapbench --seconds $SECS --rounds $ROUNDS --prepares $PREPARES, one strata-snapshotd serving all three)"
    echo
    "$SNAPBENCH" --report "$BENCH_DIR"/results/strata-blockcow.json "$BENCH_DIR"/results/strata-overlay.json \
      "$BENCH_DIR"/results/strata-vfs.json
  fi
} | tee "$BENCH_DIR/results/report.md"
if [ -n "$REPORT" ]; then cp "$BENCH_DIR/results/report.md" "$REPORT"; fi
echo "results: $BENCH_DIR/results" >&2
