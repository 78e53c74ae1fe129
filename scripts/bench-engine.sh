#!/usr/bin/env bash
# Benchmarks stratad side by side with Debian's dockerd 20.10, both driven by the same client
# (the docker CLI, default /usr/local/bin/docker, through DOCKER_HOST) and timed with hyperfine
# (medians). Unix sockets only; no network, no containers.
#
# For each pair of storage drivers (dockerd overlay2 / stratad overlay, then vfs / vfs) it starts
# one daemon at a time with private state under BENCH_DIR and measures:
#   version      `docker version` (the CLI's own start-up cost, included in every figure)
#   import       `docker import` of a busybox rootfs tar.gz
#   load         `docker load` of a busybox docker-archive
#   images       `docker images` with 200 images present (200 distinct imports, one tag each)
#   system-df    `docker system df` with the same 200 images
#   *-api        the requests of `docker images` and `docker system df` sent by curl (no goal:
#                shows the daemons' side without the docker CLI's start-up and formatting)
#   CLI alone    `docker images` and `docker system df` against dockerd's recorded answers,
#                sent back at once by scripts/bench/replay-daemon.py: the CLI's own share
#   events       50 concurrent `docker events` subscribers; time until all have seen 100 tag
#                events (scripts/bench/events-fanout.py)
#   rss          VmRSS after start-up (idle) and after the workloads; dockerd's includes its
#                managed containerd
# and prints a Markdown report (machine, command, medians, ratios stratad/dockerd, goals).
#
# Installs what is missing (docker.io, hyperfine, busybox-static; no service is started) and
# builds stratad in release mode. Everything it starts is stopped, everything it mounts is
# unmounted and its temporary directory is removed on exit.
#
# Usage: scripts/bench-engine.sh [REPORT.md]            (as root; default report: stdout only)
# Env:   RUNS=15 (hyperfine runs per operation, after 3 warm-ups)  IMAGES=200
#        SUBSCRIBERS=50 EVENTS=100 ROUNDS=5 (events fan-out)  DRIVERS="overlay vfs"
#        DOCKER_CLI=/usr/local/bin/docker  KEEP_RESULTS=DIR (copy the raw JSON results there)
#        STRATAD_BIN=PATH (use this stratad binary instead of building one)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
REPORT=${1:-}
RUNS=${RUNS:-15}
IMAGES=${IMAGES:-200}
SUBSCRIBERS=${SUBSCRIBERS:-50}
EVENTS=${EVENTS:-100}
ROUNDS=${ROUNDS:-5}
DRIVERS=${DRIVERS:-overlay vfs}
D=${DOCKER_CLI:-/usr/local/bin/docker}
KEEP_RESULTS=${KEEP_RESULTS:-}
for n in "$RUNS" "$IMAGES" "$SUBSCRIBERS" "$EVENTS" "$ROUNDS"; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "RUNS, IMAGES, SUBSCRIBERS, EVENTS and ROUNDS must be positive integers (got '$n')" >&2; exit 2; }
done
for drv in $DRIVERS; do
  case $drv in overlay|vfs) ;; *) echo "DRIVERS: unknown driver '$drv' (overlay, vfs)" >&2; exit 2 ;; esac
done
[ "$(id -u)" = 0 ] || { echo "bench-engine.sh must run as root (it starts dockerd)" >&2; exit 1; }
[ -x "$D" ] || { echo "no docker CLI at $D (set DOCKER_CLI)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 not found: apt-get install python3" >&2; exit 1; }
# shellcheck source=scripts/bench/lib.sh
. scripts/bench/lib.sh
log() { bench_log "$@"; }

# ---------------------------------------------------------------- prerequisites
bench_install_missing docker.io hyperfine busybox-static
for p in dockerd hyperfine; do
  command -v "$p" >/dev/null || { echo "$p not found after install" >&2; exit 1; }
done
DOCKERD=$(command -v dockerd)

bench_stratad cargo "$ROOT"

# ---------------------------------------------------------------- state and cleanup
BENCH_DIR=$(mktemp -d /var/tmp/strata-bench-engine.XXXXXX)
RES=$BENCH_DIR/results
mkdir -p "$RES"
export DOCKER_CONFIG=$BENCH_DIR/cli   # keep the CLI's config away from the user's
DAEMON_PID=""
stop_daemon() {
  [ -n "$DAEMON_PID" ] || return 0
  bench_stop_pid "$DAEMON_PID" daemon 15
  DAEMON_PID=""
}
cleanup() {
  stop_daemon
  # dockerd's managed containerd goes down with dockerd; anything still running from our
  # exec-roots (by path, never by name) is ours
  bench_kill_below "$BENCH_DIR"
  bench_unmount_below "$BENCH_DIR"
  if [ -n "$KEEP_RESULTS" ] && [ -d "$RES" ]; then mkdir -p "$KEEP_RESULTS" && cp -a "$RES/." "$KEEP_RESULTS/"; fi
  rm -rf "$BENCH_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "building the images in $BENCH_DIR/images"
scripts/bench/mk-engine-images.sh "$BENCH_DIR/images" >&2
ROOTFS=$BENCH_DIR/images/rootfs.tar.gz
LOADTAR=$BENCH_DIR/images/load.tar

# ---------------------------------------------------------------- daemons
SOCK=""
start_daemon() {  # start_daemon dockerd|stratad <driver>
  local kind=$1 drv=$2 dir=$BENCH_DIR/$1-$2
  mkdir -p "$dir"
  SOCK=$dir/api.sock
  case $kind in
    dockerd)
      "$DOCKERD" --data-root "$dir/data" --exec-root "$dir/exec" --pidfile "$dir/dockerd.pid" \
        -H "unix://$SOCK" --storage-driver "$drv" \
        --bridge=none --iptables=false --ip-forward=false --ip-masq=false --userland-proxy=false \
        >"$dir/log" 2>&1 </dev/null &
      ;;
    stratad)
      echo '{}' > "$dir/daemon.json"   # an empty configuration: ignore any /etc/strata/daemon.json
      "$STRATAD" --config-file "$dir/daemon.json" --data-root "$dir/data" -H "unix://$SOCK" \
        --storage-driver "$drv" >"$dir/log" 2>&1 </dev/null &
      ;;
  esac
  DAEMON_PID=$!
  bench_wait_ping "$kind" "$SOCK" "$DAEMON_PID" "$dir/log" 30 || { kill -0 "$DAEMON_PID" 2>/dev/null || DAEMON_PID=""; return 1; }
}
rss_kib() {  # VmRSS of the daemon plus its child processes (dockerd: its managed containerd)
  local total=0 p r
  for p in "$DAEMON_PID" $(pgrep -P "$DAEMON_PID" 2>/dev/null || true); do
    r=$(awk '/^VmRSS/{print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
    total=$((total + ${r:-0}))
  done
  echo "$total"
}
procs() { local p; for p in "$DAEMON_PID" $(pgrep -P "$DAEMON_PID" 2>/dev/null || true); do printf '%s ' "$(cat /proc/$p/comm 2>/dev/null)"; done; }

hf() { bench_hf "$@"; }

# ---------------------------------------------------------------- one daemon, all workloads
bench_daemon() {  # bench_daemon dockerd|stratad <driver>
  local kind=$1 drv=$2 out=$RES/$1-$2
  mkdir -p "$out"
  log "$kind ($drv): starting"
  cut -d' ' -f1 /proc/loadavg > "$out/load-start.txt"
  start_daemon "$kind" "$drv" || { echo "start failed" > "$out/start.err"; return 0; }
  export DOCKER_HOST=unix://$SOCK
  sleep 3
  echo "$(rss_kib)" > "$out/rss-idle.txt"
  echo "$(procs)" > "$out/procs.txt"
  "$D" info --format '{{.Driver}} {{.ServerVersion}}' > "$out/info.txt" 2>"$out/info.err" || true
  log "$kind ($drv): idle RSS $(cat "$out/rss-idle.txt") KiB ($(cat "$out/procs.txt")); $(cat "$out/info.txt")"

  local rmi="sh -c '$D rmi -f bench/imp:latest bench/load:latest >/dev/null 2>&1; true'"
  hf "$out" version "$D version"
  hf "$out" import --prepare "$rmi" "$D import -c 'CMD [\"sh\"]' $ROOTFS bench/imp:latest"
  hf "$out" load --prepare "$rmi" "$D load -q -i $LOADTAR"
  "$D" rmi -f bench/imp:latest bench/load:latest >/dev/null 2>&1 || true

  log "$kind ($drv): $IMAGES imports"
  local t0 t1 i fails=0
  t0=$(date +%s%N)
  for i in $(seq "$IMAGES"); do
    "$D" import -c "LABEL bench.n=$i" -m "bench image $i" "$ROOTFS" "bench/many:$i" >/dev/null 2>>"$out/populate.err" || fails=$((fails + 1))
  done
  t1=$(date +%s%N)
  echo "$(( (t1 - t0) / 1000000 ))" > "$out/populate-ms.txt"
  echo "$fails" > "$out/populate-failures.txt"
  "$D" images -q --no-trunc | sort -u | wc -l > "$out/image-count.txt" 2>/dev/null || echo "?" > "$out/image-count.txt"
  log "$kind ($drv): $(cat "$out/image-count.txt") images after populating ($fails failed imports, $(cat "$out/populate-ms.txt") ms)"
  hf "$out" images "$D images"
  hf "$out" system-df "$D system df"
  # The same two requests without the CLI: curl's own start-up instead of the docker CLI's.
  hf "$out" images-api "curl -sf -o /dev/null --unix-socket $SOCK http://d/images/json"
  hf "$out" system-df-api "curl -sf -o /dev/null --unix-socket $SOCK http://d/system/df"

  if [ "$kind" = dockerd ]; then
    # dockerd's answers to the requests of `docker images` and `docker system df`, kept for
    # the CLI-alone measurement (replay_floor) once dockerd is stopped
    local rep=$BENCH_DIR/replay-$drv
    python3 scripts/bench/replay-daemon.py record --socket "$SOCK" --dir "$rep" ping HEAD /_ping 2>>"$out/replay.err" &&
      python3 scripts/bench/replay-daemon.py record --socket "$SOCK" --dir "$rep" images GET "/v{api}/images/json" 2>>"$out/replay.err" &&
      python3 scripts/bench/replay-daemon.py record --socket "$SOCK" --dir "$rep" system-df GET "/v{api}/system/df" 2>>"$out/replay.err" ||
      echo "recording dockerd's answers FAILED: $(tail -3 "$out/replay.err")" >&2
  fi

  log "$kind ($drv): events fan-out ($SUBSCRIBERS subscribers x $EVENTS tag events, $ROUNDS rounds)"
  python3 scripts/bench/events-fanout.py --docker "$D" --socket "$SOCK" --image bench/many:1 \
    --subscribers "$SUBSCRIBERS" --events "$EVENTS" --rounds "$ROUNDS" \
    > "$out/events.json" 2>"$out/events.err" || { rm -f "$out/events.json"; echo "events FAILED: $(tail -3 "$out/events.err")" >&2; }

  sleep 3
  echo "$(rss_kib)" > "$out/rss-after.txt"
  cut -d' ' -f1 /proc/loadavg > "$out/load-end.txt"
  log "$kind ($drv): RSS after the workloads $(cat "$out/rss-after.txt") KiB; stopping"
  unset DOCKER_HOST
  stop_daemon
  bench_unmount_below "$BENCH_DIR/$kind-$drv"
  rm -rf "${BENCH_DIR:?}/$kind-$drv"
  [ "$kind" = dockerd ] && replay_floor "$drv"
  return 0
}

# replay_floor <driver>: `docker images` and `docker system df` against dockerd's recorded answers
# sent back at once by scripts/bench/replay-daemon.py (no daemon running): the docker CLI's own
# share of those two figures.
replay_floor() {
  local drv=$1 rep=$BENCH_DIR/replay-$drv out=$RES/replay-$drv
  mkdir -p "$out"
  [ -f "$rep/images.body" ] && [ -f "$rep/system-df.body" ] || { echo "no recorded answers" > "$out/start.err"; return 0; }
  log "CLI alone: replaying dockerd's ($drv) answers"
  bench_replay_hf "$rep" "$out" "HEAD /_ping=ping" "GET /images/json=images" "GET /system/df=system-df" -- \
    images "$D images" system-df "$D system df"
}

for drv in $DRIVERS; do
  case $drv in overlay) dd=overlay2 ;; *) dd=$drv ;; esac
  bench_daemon dockerd "$dd"
  bench_daemon stratad "$drv"
done

# ---------------------------------------------------------------- report
STRATAD_REV=$(bench_stratad_rev)
MACHINE=$(bench_machine)
VERSIONS="docker CLI $("$D" --version | awk '{print $3}' | tr -d ,), dockerd $("$DOCKERD" --version 2>/dev/null | awk '{print $3}' | tr -d ,), stratad $STRATAD_REV, hyperfine $(hyperfine --version | awk '{print $2}')"

python3 - "$RES" "$DRIVERS" "$RUNS" "$IMAGES" "$SUBSCRIBERS" "$EVENTS" "$ROUNDS" "$MACHINE" "$VERSIONS" > "$BENCH_DIR/report.md" <<'PY'
import json, os, sys
sys.path.insert(0, "scripts/bench")
from report import Results, fmt, ratio
res, drivers, runs, images, subs, events, rounds, machine, versions = sys.argv[1:]
drivers = drivers.split()
R = Results(res)
read, median_ms, error = R.read, R.median_ms, R.error

print(f"Machine: {machine}.  ")
print(f"Software: {versions}.  ")
print(f"Each time is the median of {runs} hyperfine runs (after 3 warm-ups) and includes starting the docker CLI process (see `docker version`). "
      f"Images/system df run with {images} images present. Events: {subs} `docker events` subscribers, {events} tag events per round, median of {rounds} rounds. "
      "RSS is VmRSS of the daemon process (dockerd: plus its managed containerd), 3 s after start-up (idle) and 3 s after the workloads.")
print()
verdicts = []
failures = []
for drv in drivers:
    dd = "overlay2" if drv == "overlay" else drv
    dk, sk = f"dockerd-{dd}", f"stratad-{drv}"
    print(f"### {drv} (dockerd `{dd}`, stratad `{drv}`)")
    print()
    for k in (dk, sk):
        if read(os.path.join(res, k, "start.err")):
            print(f"**{k} did not start**; see the script's output.\n")
    print("| operation | dockerd 20.10 | stratad | stratad/dockerd | goal (<= 0.50) |")
    print("|---|---:|---:|---:|---|")
    ops = [("version", "`docker version` (CLI baseline)"), ("import", "`docker import` busybox rootfs"),
           ("load", "`docker load` busybox archive"), ("images", f"`docker images` ({images} images)"),
           ("system-df", f"`docker system df` ({images} images)"),
           ("images-api", f"`GET /images/json` by curl ({images} images; no goal)"),
           ("system-df-api", f"`GET /system/df` by curl ({images} images; no goal)")]
    for op, label in ops:
        d, s = median_ms(dk, op), median_ms(sk, op)
        r = ratio(s, d)
        if op == "version" or op.endswith("-api"):
            goal = "(baseline)" if op == "version" else ""
        else:
            goal = "n/a" if r is None else ("met" if r <= 0.5 else "not met")
            verdicts.append((drv, label, goal))
        for k, v in ((dk, d), (sk, s)):
            if v is None:
                failures.append(f"{k} {op}: {error(k, op)}")
        print(f"| {label} | {fmt(d)} | {fmt(s)} | {fmt(r, '')} | {goal} |")
    ev = {}
    for k in (dk, sk):
        t = read(os.path.join(res, k, "events.json"))
        ev[k] = json.loads(t) if t else None
        if not t:
            failures.append(f"{k} events: {error(k, 'events')}")
    d = ev[dk]["median_deliver_all_s"] * 1000 if ev[dk] else None
    s = ev[sk]["median_deliver_all_s"] * 1000 if ev[sk] else None
    r = ratio(s, d)
    goal = "n/a" if r is None else ("met" if r <= 0.5 else "not met")
    verdicts.append((drv, "events fan-out", goal))
    print(f"| events: {events} tags seen by all {subs} subscribers | {fmt(d)} | {fmt(s)} | {fmt(r, '')} | {goal} |")
    de = ev[dk]["delivered_events_per_s"] if ev[dk] else None
    se = ev[sk]["delivered_events_per_s"] if ev[sk] else None
    print(f"| events delivered per second (higher is better) | {fmt(de, '/s')} | {fmt(se, '/s')} | {fmt(ratio(se, de), '')} | |")
    dsend = ev[dk]["median_send_s"] * 1000 if ev[dk] else None
    ssend = ev[sk]["median_send_s"] * 1000 if ev[sk] else None
    print(f"| events: time to send the {events} tag requests | {fmt(dsend)} | {fmt(ssend)} | {fmt(ratio(ssend, dsend), '')} | |")
    for tag, label in (("idle", "idle RSS after start-up"), ("after", "RSS after the workloads")):
        dv, sv = read(os.path.join(res, dk, f"rss-{tag}.txt")), read(os.path.join(res, sk, f"rss-{tag}.txt"))
        dv = int(dv) / 1024 if dv and dv.isdigit() and int(dv) > 0 else None
        sv = int(sv) / 1024 if sv and sv.isdigit() and int(sv) > 0 else None
        r = ratio(sv, dv)
        goal = "n/a" if r is None else ("met" if r <= 0.25 else "not met")
        if tag == "idle":
            verdicts.append((drv, "idle RSS (<= 0.25)", goal))
        print(f"| {label} | {fmt(dv, 'MiB')} | {fmt(sv, 'MiB')} | {fmt(r, '')} | {goal if tag == 'idle' else ''}{' (<= 0.25)' if tag == 'idle' else ''} |")
    for k in (dk, sk):
        pm, pf, ic = read(os.path.join(res, k, "populate-ms.txt")), read(os.path.join(res, k, "populate-failures.txt")), read(os.path.join(res, k, "image-count.txt"))
        procs = read(os.path.join(res, k, "procs.txt"))
        l0, l1 = read(os.path.join(res, k, "load-start.txt")), read(os.path.join(res, k, "load-end.txt"))
        if pm:
            print(f"\n{k}: {images} sequential `docker import`s took {int(pm)/1000:.1f} s ({pf} failed); {ic} distinct image IDs listed afterwards; processes counted for RSS: {procs}; 1-minute load average {l0} at the start, {l1} at the end.", end="")
    rk = f"replay-{dd}"
    for op, label in (("images", f"`docker images` ({images} images)"), ("system-df", f"`docker system df` ({images} images)")):
        f, d = median_ms(rk, op), median_ms(dk, op)
        if f is None:
            failures.append(f"{rk} {op}: {error(rk, op)}")
            continue
        r = ratio(f, d)
        print(f"\nCLI alone, {label}, dockerd's recorded answers replayed with no daemon work: {fmt(f)}"
              + (f" = {r:.2f} of dockerd's time" if r is not None else "")
              + (": no daemon behind this CLI can reach 0.50" if r is not None and r > 0.5 else "") + ".", end="")
    print("\n")
met = sum(1 for v in verdicts if v[2] == "met")
print(f"Goals met: {met} of {len(verdicts)}.", end="")
notmet = [f"{d}: {l}" for d, l, g in verdicts if g != "met"]
print(" Not met: " + "; ".join(notmet) + "." if notmet else "")
if failures:
    print("\nFailures:\n")
    for f in failures:
        print(f"- {f}")
PY
cat "$BENCH_DIR/report.md"
if [ -n "$REPORT" ]; then cp "$BENCH_DIR/report.md" "$REPORT"; log "report written to $REPORT"; fi
