# Shell functions shared by scripts/bench-engine.sh and scripts/bench-containers.sh: installing
# Debian packages without starting services, finding or building stratad, stopping daemons,
# unmounting below a directory, running hyperfine (also against replayed answers), and
# describing the machine.
# Sourced, not run. Expects `set -euo pipefail` and, for bench_hf, RUNS.

bench_log() { echo "==> $*" >&2; }

# bench_install_missing PKG...: installs the packages that are not installed yet. While apt
# runs, /usr/sbin/policy-rc.d answers 101 so that no service starts; the previous file (or its
# absence) is put back.
bench_install_missing() {
  local missing=() p
  for p in "$@"; do
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)" = installed ] || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  bench_log "installing ${missing[*]} (no service is started)"
  local policy=/usr/sbin/policy-rc.d saved=""
  if [ -e "$policy" ] || [ -L "$policy" ]; then
    saved=$(mktemp -d /tmp/bench-policy.XXXXXX); cp -a "$policy" "$saved/"
  fi
  rm -f "$policy"
  printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod 755 "$policy"
  local rc=0
  { DEBIAN_FRONTEND=noninteractive apt-get update -q &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"; } >&2 || rc=$?
  if [ -n "$saved" ]; then cp -a "$saved/policy-rc.d" "$policy"; rm -rf "$saved"; else rm -f "$policy"; fi
  [ $rc = 0 ] || { echo "apt-get install ${missing[*]} failed" >&2; exit 1; }
}

# bench_stratad CARGO ROOT: sets STRATAD to $STRATAD_BIN, or builds stratad in release mode
# with CARGO in the checkout ROOT.
bench_stratad() {
  local cargo=$1 root=$2
  if [ -n "${STRATAD_BIN:-}" ]; then
    STRATAD=$STRATAD_BIN
    bench_log "using the prebuilt $STRATAD"
  else
    bench_log "building stratad (release)"
    "$cargo" build --release -q -p stratad --bin stratad >&2
    STRATAD=${CARGO_TARGET_DIR:-$root/target}/release/stratad
    case $STRATAD in /*) ;; *) STRATAD=$root/$STRATAD ;; esac
  fi
  [ -x "$STRATAD" ] || { echo "no stratad binary at $STRATAD" >&2; exit 1; }
}

# bench_stratad_rev: how the report names the stratad that ran.
bench_stratad_rev() {
  local rev
  rev="of commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  git diff --quiet HEAD -- daemon/engine snapshotter drivers 2>/dev/null || rev="$rev plus uncommitted changes"
  rev="$rev (release build)"
  [ -n "${STRATAD_BIN:-}" ] && rev="prebuilt $STRATAD_BIN"
  echo "$rev"
}

# bench_stop_pid PID NAME SECONDS: TERM, then KILL once SECONDS have passed.
bench_stop_pid() {
  local pid=$1 name=$2 secs=$3
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq $((secs * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && { echo "$name ($pid) ignored TERM for $secs s; killing" >&2; kill -KILL "$pid" 2>/dev/null || true; }
  fi
  wait "$pid" 2>/dev/null || true
}

# bench_unmount_below DIR: unmounts DIR and everything below it, deepest first.
bench_unmount_below() {
  awk -v p="$1" '$2 == p || index($2, p "/") == 1 {print $2}' /proc/self/mounts | sort -r |
    while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
}

# bench_kill_below DIR: TERM to processes started from DIR (shims, runc, containerd), by path.
bench_kill_below() {
  local p
  for p in $(pgrep -f -- "$1/" 2>/dev/null || true); do kill -TERM "$p" 2>/dev/null || true; done
}

# bench_wait_ping KIND SOCKET PID LOG SECONDS: waits for /_ping on the unix SOCKET; on failure
# prints the end of LOG and returns 1.
bench_wait_ping() {
  local kind=$1 sock=$2 pid=$3 log=$4 secs=$5
  for _ in $(seq $((secs * 10))); do
    curl -sf --unix-socket "$sock" http://d/_ping >/dev/null 2>&1 && return 0
    kill -0 "$pid" 2>/dev/null || { echo "$kind exited during start-up; log:" >&2; tail -30 "$log" >&2; return 1; }
    sleep 0.1
  done
  echo "$kind did not answer /_ping within $secs s; log:" >&2; tail -30 "$log" >&2; return 1
}

# bench_hf OUT-DIR NAME [hyperfine args...]: RUNS runs after 3 warm-ups, JSON to OUT-DIR/NAME.json;
# a failure is recorded (OUT-DIR/NAME.err), not fatal.
bench_hf() {
  local out=$1 n=$2; shift 2
  if ! hyperfine -N --style none --warmup 3 --runs "$RUNS" --export-json "$out/$n.json" "$@" >/dev/null 2>"$out/$n.err"; then
    rm -f "$out/$n.json"
    { echo "$n FAILED"; tail -5 "$out/$n.err"; } >&2
  fi
}

# bench_replay_hf REC-DIR OUT-DIR ROUTE... -- NAME COMMAND [NAME COMMAND ...]: serves the answers
# recorded in REC-DIR (scripts/bench/replay-daemon.py record) on REC-DIR/api.sock, as ROUTEs
# ("METHOD /path=NAME"), and times each COMMAND with bench_hf against it (DOCKER_HOST): the
# docker CLI's own time, with no daemon work behind it.
bench_replay_hf() {
  local rec=$1 out=$2 pid routes=()
  shift 2
  while [ $# -gt 0 ] && [ "$1" != -- ]; do routes+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  mkdir -p "$out"
  python3 scripts/bench/replay-daemon.py serve --socket "$rec/api.sock" --dir "$rec" "${routes[@]}" 2>"$out/replay.log" &
  pid=$!
  for _ in $(seq 100); do [ -S "$rec/api.sock" ] && break; sleep 0.05; done
  while [ $# -ge 2 ]; do
    DOCKER_HOST=unix://$rec/api.sock bench_hf "$out" "$1" "$2"
    shift 2
  done
  bench_stop_pid "$pid" replay-daemon 5
  if [ -s "$out/replay.log" ]; then echo "replay-daemon: $(head -3 "$out/replay.log")" >&2; fi
}

# bench_machine: CPUs, memory, kernel and the disk under /var/tmp, for the report.
bench_machine() {
  local src dev rot parent kind
  src=$(findmnt -no SOURCE -T /var/tmp 2>/dev/null | head -1)
  dev=$(basename "$(readlink -f "$src" 2>/dev/null || echo "$src")")
  rot=$(cat "/sys/class/block/$dev/queue/rotational" 2>/dev/null || true)
  parent=$(lsblk -no PKNAME "/dev/$dev" 2>/dev/null | head -1 || true)
  [ -z "$rot" ] && [ -n "$parent" ] && rot=$(cat "/sys/class/block/$parent/queue/rotational" 2>/dev/null || true)
  kind="unknown"
  case $rot in 0) kind="reported non-rotational" ;; 1) kind="reported rotational" ;; esac
  case $dev in vd*) kind="$kind virtio disk" ;; nvme*) kind="$kind NVMe" ;; esac
  echo "$(nproc) CPUs ($(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo)), $(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo) RAM, kernel $(uname -r), disk $src ($kind, $(findmnt -no FSTYPE -T /var/tmp 2>/dev/null))"
}
