#!/usr/bin/env bash
# Container benchmarks: stratad side by side with Debian's dockerd 20.10, both running their
# containers with the same runc binary and driven by the same client (the docker CLI, default
# /usr/local/bin/docker, through DOCKER_HOST on a unix socket), timed with hyperfine (medians).
#
# For each pair of storage drivers (dockerd overlay2 / stratad overlay, then vfs / vfs) it starts
# one daemon at a time with private state under a temporary directory and measures:
#   version   `docker version` (the CLI's own start-up cost, included in every figure)
#   create    `docker create --name bench-create --network none busybox true`; the container is
#             removed before each run (hyperfine --prepare), outside the timing
#   CLI alone `docker create` against dockerd's recorded answers, sent back at once by
#             scripts/bench/replay-daemon.py (no daemon work): the CLI's own share of create
#   rm        `docker rm bench-rm` of a created (never started) container made in --prepare
#   run       `docker run --rm --network none busybox true`
#   commit    `docker commit` of a stopped container that wrote, added and removed a few files;
#             the committed image is removed before each run
#   pull      `docker pull -q` of a 3-layer image (scripts/bench/mk-layered-image.py, 5.3 MB
#             uncompressed) from a local docker-registry on 127.0.0.1; the image is removed
#             before each run, so all three layers are downloaded and unpacked every time. The
#             image is pushed once, by the first daemon that runs
#   stats     `docker stats --no-stream` with 20 running `sleep` containers
#   churn     scripts/bench/container-churn.py: 32 concurrent API clients creating, starting,
#             waiting for and removing containers for 60 s, twice; operations, errors, the
#             daemon's open fds and RSS before, at the peak, after and after a 10 s settle
# and prints a Markdown report (machine, command, medians, ratios stratad/dockerd, goals).
#
# Installs what is missing (docker.io, hyperfine, docker-registry, busybox-static, runc; no
# service is started) and builds stratad in release mode. Both daemons get the same fixed PATH;
# dockerd is given that PATH's runc explicitly as its default runtime, and `docker info` must
# show it. Everything it starts is stopped, everything it mounts is unmounted and its temporary
# directory is removed on exit.
#
# Usage: scripts/bench-containers.sh [REPORT.md]        (as root; default report: stdout only)
# Env:   RUNS=15 (hyperfine runs per operation, after 3 warm-ups)  STATS_CONTAINERS=20
#        CLIENTS=32 CHURN_SECONDS=60 CHURN_ROUNDS=2 SETTLE=10  DRIVERS="overlay vfs"
#        DOCKER_CLI=/usr/local/bin/docker  KEEP_RESULTS=DIR (copy the raw results there)
#        STRATAD_BIN=PATH (use this stratad binary instead of building one)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
REPORT=${1:-}
RUNS=${RUNS:-15}
STATS_CONTAINERS=${STATS_CONTAINERS:-20}
CLIENTS=${CLIENTS:-32}
CHURN_SECONDS=${CHURN_SECONDS:-60}
CHURN_ROUNDS=${CHURN_ROUNDS:-2}
SETTLE=${SETTLE:-10}
DRIVERS=${DRIVERS:-overlay vfs}
D=${DOCKER_CLI:-/usr/local/bin/docker}
KEEP_RESULTS=${KEEP_RESULTS:-}
for n in "$RUNS" "$STATS_CONTAINERS" "$CLIENTS" "$CHURN_SECONDS" "$CHURN_ROUNDS" "$SETTLE"; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "RUNS, STATS_CONTAINERS, CLIENTS, CHURN_SECONDS, CHURN_ROUNDS and SETTLE must be positive integers (got '$n')" >&2; exit 2; }
done
for drv in $DRIVERS; do
  case $drv in overlay|vfs) ;; *) echo "DRIVERS: unknown driver '$drv' (overlay, vfs)" >&2; exit 2 ;; esac
done
[ "$(id -u)" = 0 ] || { echo "bench-containers.sh must run as root (it starts dockerd and runs containers)" >&2; exit 1; }
[ -x "$D" ] || { echo "no docker CLI at $D (set DOCKER_CLI)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 not found: apt-get install python3" >&2; exit 1; }
command -v curl >/dev/null || { echo "curl not found: apt-get install curl" >&2; exit 1; }

# Both daemons resolve runc (and dockerd its containerd) through this PATH, never the caller's.
DAEMON_PATH=/usr/sbin:/usr/bin:/sbin:/bin
# cargo (rustup puts it in ~/.cargo/bin) is looked up before PATH is narrowed.
CARGO=$(command -v cargo || echo "${CARGO_HOME:-$HOME/.cargo}/bin/cargo")
export PATH=/usr/local/bin:$DAEMON_PATH
# shellcheck source=scripts/bench/lib.sh
. scripts/bench/lib.sh
log() { bench_log "$@"; }

# ---------------------------------------------------------------- prerequisites
bench_install_missing docker.io hyperfine docker-registry busybox-static runc
for p in dockerd hyperfine docker-registry runc; do
  PATH=$DAEMON_PATH command -v "$p" >/dev/null || { echo "$p not found in $DAEMON_PATH after install" >&2; exit 1; }
done
DOCKERD=$(PATH=$DAEMON_PATH command -v dockerd)
REGISTRY_BIN=$(PATH=$DAEMON_PATH command -v docker-registry)
RUNC=$(readlink -f "$(PATH=$DAEMON_PATH command -v runc)")
BUSYBOX=/bin/busybox
[ -x "$BUSYBOX" ] || { echo "no $BUSYBOX: apt-get install busybox-static" >&2; exit 1; }

bench_stratad "$CARGO" "$ROOT"

# ---------------------------------------------------------------- state and cleanup
BENCH_DIR=$(mktemp -d /var/tmp/strata-bench-containers.XXXXXX)
RES=$BENCH_DIR/results
mkdir -p "$RES"
export DOCKER_CONFIG=$BENCH_DIR/cli   # keep the CLI's config away from the user's
DAEMON_PID=""
REGISTRY_PID=""
stop_daemon() {
  [ -n "$DAEMON_PID" ] || return 0
  bench_stop_pid "$DAEMON_PID" daemon 30
  DAEMON_PID=""
}
cleanup() {
  # containers the daemon still runs go first, so that their mounts can go
  if [ -n "$DAEMON_PID" ] && [ -n "${DOCKER_HOST:-}" ]; then
    remove_all
  fi
  stop_daemon
  [ -n "$REGISTRY_PID" ] && bench_stop_pid "$REGISTRY_PID" docker-registry 30
  bench_kill_below "$BENCH_DIR"
  bench_unmount_below "$BENCH_DIR"
  if [ -n "$KEEP_RESULTS" ] && [ -d "$RES" ]; then mkdir -p "$KEEP_RESULTS" && cp -a "$RES/." "$KEEP_RESULTS/"; fi
  rm -rf "$BENCH_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "building the images in $BENCH_DIR/images"
scripts/bench/mk-engine-images.sh "$BENCH_DIR/images" "$BUSYBOX" >&2
python3 scripts/bench/mk-layered-image.py "$BENCH_DIR/images/three.tar" --busybox "$BUSYBOX" --tag bench/three:latest >&2
LOADTAR=$BENCH_DIR/images/load.tar
THREETAR=$BENCH_DIR/images/three.tar

# ---------------------------------------------------------------- registry
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
start_registry() {
  local dir=$BENCH_DIR/registry port
  mkdir -p "$dir/storage"
  port=$(free_port)
  printf 'version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:%s\n' \
    "$dir/storage" "$port" > "$dir/config.yml"
  "$REGISTRY_BIN" serve "$dir/config.yml" >"$dir/log" 2>&1 </dev/null &
  REGISTRY_PID=$!
  for _ in $(seq 200); do
    curl -sf "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && { REGISTRY=127.0.0.1:$port; return 0; }
    kill -0 "$REGISTRY_PID" 2>/dev/null || { echo "docker-registry exited during start-up:" >&2; tail -20 "$dir/log" >&2; exit 1; }
    sleep 0.1
  done
  echo "docker-registry did not answer on 127.0.0.1:$port within 20 s:" >&2; tail -20 "$dir/log" >&2; exit 1
}
REGISTRY=""
start_registry
PULL_REF=$REGISTRY/bench/three:latest
PUSHED=""
log "docker-registry on $REGISTRY"

# ---------------------------------------------------------------- daemons
SOCK=""
start_daemon() {  # start_daemon dockerd|stratad <driver>
  local kind=$1 drv=$2 dir=$BENCH_DIR/$1-$2
  mkdir -p "$dir"
  SOCK=$dir/api.sock
  case $kind in
    dockerd)
      env -i PATH="$DAEMON_PATH" HOME=/root \
        "$DOCKERD" --data-root "$dir/data" --exec-root "$dir/exec" --pidfile "$dir/dockerd.pid" \
        -H "unix://$SOCK" --storage-driver "$drv" \
        --add-runtime "bench-runc=$RUNC" --default-runtime bench-runc \
        --bridge=none --iptables=false --ip-forward=false --ip-masq=false --userland-proxy=false \
        >"$dir/log" 2>&1 </dev/null &
      ;;
    stratad)
      echo '{}' > "$dir/daemon.json"   # an empty configuration: ignore any /etc/strata/daemon.json
      env -i PATH="$DAEMON_PATH" HOME=/root \
        "$STRATAD" --config-file "$dir/daemon.json" --data-root "$dir/data" -H "unix://$SOCK" \
        --storage-driver "$drv" >"$dir/log" 2>&1 </dev/null &
      ;;
  esac
  DAEMON_PID=$!
  bench_wait_ping "$kind" "$SOCK" "$DAEMON_PID" "$dir/log" 60 || { kill -0 "$DAEMON_PID" 2>/dev/null || DAEMON_PID=""; return 1; }
}
daemon_pids() {  # the daemon and, for dockerd, its managed containerd
  local p
  printf '%s' "$DAEMON_PID"
  for p in $(pgrep -P "$DAEMON_PID" 2>/dev/null || true); do
    [ "$(cat "/proc/$p/comm" 2>/dev/null)" = containerd ] && printf ',%s' "$p"
  done
  echo
}
rss_kib() {
  local total=0 p r
  for p in $(daemon_pids | tr , ' '); do
    r=$(awk '/^VmRSS/{print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
    total=$((total + ${r:-0}))
  done
  echo "$total"
}
procs() { local p; for p in $(daemon_pids | tr , ' '); do printf '%s ' "$(cat /proc/$p/comm 2>/dev/null)"; done; }
mounts_below() { awk -v p="$1" 'index($2, p "/") == 1' /proc/self/mounts | wc -l; }

hf() { bench_hf "$@"; }
q() { timeout 120 "$@" >/dev/null 2>&1 || true; }   # quiet set-up and tear-down steps, with a deadline
remove_all() {  # removes every container of the current daemon; gives up after 120 s
  local ids
  ids=$(timeout 60 "$D" ps -aq 2>/dev/null || true)
  [ -z "$ids" ] && return 0
  # shellcheck disable=SC2086
  timeout 120 "$D" rm -f $ids >/dev/null 2>&1 || echo "removing the containers left on the daemon did not finish within 120 s" >&2
}

# ---------------------------------------------------------------- one daemon, all workloads
bench_daemon() {  # bench_daemon dockerd|stratad <driver>
  local kind=$1 drv=$2 out=$RES/$1-$2 ddir=$BENCH_DIR/$1-$2
  mkdir -p "$out"
  log "$kind ($drv): starting"
  cut -d' ' -f1 /proc/loadavg > "$out/load-start.txt"
  start_daemon "$kind" "$drv" || { echo "start failed" > "$out/start.err"; return 0; }
  export DOCKER_HOST=unix://$SOCK
  "$D" info --format '{{.Driver}} {{.ServerVersion}} default runtime {{.DefaultRuntime}} {{json .Runtimes}}' > "$out/info.txt" 2>"$out/info.err" || true
  log "$kind ($drv): $(cat "$out/info.txt")"
  if [ "$kind" = dockerd ] && ! grep -q "default runtime bench-runc .*\"bench-runc\":{\"path\":\"$RUNC\"" "$out/info.txt"; then
    echo "dockerd does not report $RUNC as its default runtime: $(cat "$out/info.txt")" >&2; exit 1
  fi

  "$D" load -q -i "$LOADTAR" >/dev/null && "$D" tag bench/load:latest busybox:latest ||
    { echo "$kind ($drv): docker load of the busybox image failed" >&2; exit 1; }
  if [ -z "$PUSHED" ]; then
    log "$kind ($drv): pushing the 3-layer image to $PULL_REF"
    "$D" load -q -i "$THREETAR" >/dev/null && "$D" tag bench/three:latest "$PULL_REF" &&
      "$D" push -q "$PULL_REF" > "$RES/push.txt" 2>&1 ||
      { echo "push to the registry failed:" >&2; cat "$RES/push.txt" >&2; exit 1; }
    echo "$kind ($drv)" > "$RES/pushed-by.txt"
    PUSHED=1
    q "$D" rmi -f bench/three:latest "$PULL_REF"
  fi
  sleep 3
  echo "$(rss_kib)" > "$out/rss-idle.txt"
  echo "$(procs)" > "$out/procs.txt"

  hf "$out" version "$D version"
  hf "$out" create --prepare "sh -c '$D rm -f bench-create >/dev/null 2>&1; true'" \
    "$D create --name bench-create --network none busybox true"
  q "$D" rm -f bench-create
  if [ "$kind" = dockerd ]; then
    # dockerd's answers to the requests of `docker create`, for the CLI-alone measurement
    # (replay_floor) once dockerd is stopped
    local rep=$BENCH_DIR/replay-$drv
    python3 scripts/bench/replay-daemon.py record --socket "$SOCK" --dir "$rep" ping HEAD /_ping 2>>"$out/replay.err" &&
      python3 scripts/bench/replay-daemon.py record --socket "$SOCK" --dir "$rep" create POST "/v{api}/containers/create?name=bench-create-rec" \
        '{"Image":"busybox","Cmd":["true"],"HostConfig":{"NetworkMode":"none"}}' 2>>"$out/replay.err" ||
      echo "recording dockerd's answers FAILED: $(tail -3 "$out/replay.err")" >&2
    q "$D" rm -f bench-create-rec
  fi
  hf "$out" rm --prepare "sh -c '$D rm -f bench-rm >/dev/null 2>&1; $D create --name bench-rm --network none busybox true >/dev/null'" \
    "$D rm bench-rm"
  hf "$out" run "$D run --rm --network none busybox true"

  "$D" run --name bench-commit-src --network none busybox \
    sh -c 'echo changed > /etc/bench-a && mkdir -p /srv/data && echo one > /srv/data/one && echo two > /srv/data/two && rm /bin/vi' \
    > "$out/commit-src.txt" 2>&1 || echo "$kind ($drv): the container to commit failed: $(cat "$out/commit-src.txt")" >&2
  "$D" diff bench-commit-src > "$out/commit-diff.txt" 2>&1 || true
  hf "$out" commit --prepare "sh -c '$D rmi -f bench/committed:latest >/dev/null 2>&1; true'" \
    "$D commit bench-commit-src bench/committed:latest"
  q "$D" rm -f bench-commit-src
  q "$D" rmi -f bench/committed:latest

  hf "$out" pull --prepare "sh -c '$D rmi -f $PULL_REF >/dev/null 2>&1; true'" "$D pull -q $PULL_REF"
  "$D" image inspect --format '{{len .RootFS.Layers}}' "$PULL_REF" > "$out/pull-layers.txt" 2>&1 || true
  q "$D" rmi -f "$PULL_REF"

  log "$kind ($drv): $STATS_CONTAINERS sleep containers for docker stats"
  local i fails=0
  for i in $(seq "$STATS_CONTAINERS"); do
    "$D" run -d --name "bench-sleep-$i" --network none busybox sleep 100000 >/dev/null 2>>"$out/stats-setup.err" || fails=$((fails + 1))
  done
  "$D" ps -q | wc -l > "$out/stats-running.txt"
  [ "$fails" = 0 ] || echo "$kind ($drv): $fails of $STATS_CONTAINERS sleep containers failed to start: $(tail -2 "$out/stats-setup.err")" >&2
  "$D" stats --no-stream > "$out/stats-sample.txt" 2>&1 || true
  hf "$out" stats "$D stats --no-stream"
  for i in $(seq "$STATS_CONTAINERS"); do q "$D" rm -f "bench-sleep-$i"; done

  log "$kind ($drv): churn, $CLIENTS clients x ${CHURN_SECONDS} s x $CHURN_ROUNDS rounds"
  mounts_below "$ddir" > "$out/mounts-before-churn.txt"
  python3 scripts/bench/container-churn.py --socket "$SOCK" --image busybox:latest --pids "$(daemon_pids)" \
    --clients "$CLIENTS" --seconds "$CHURN_SECONDS" --rounds "$CHURN_ROUNDS" --settle "$SETTLE" \
    > "$out/churn.json" 2>"$out/churn.err" || { rm -f "$out/churn.json"; echo "churn FAILED: $(tail -3 "$out/churn.err")" >&2; }
  mounts_below "$ddir" > "$out/mounts-after-churn.txt"
  [ -f "$out/churn.json" ] && log "$kind ($drv): churn: $(tail -1 "$out/churn.err")"

  echo "$(rss_kib)" > "$out/rss-after.txt"
  cut -d' ' -f1 /proc/loadavg > "$out/load-end.txt"
  cp "$ddir/log" "$out/daemon.log" 2>/dev/null || true
  log "$kind ($drv): stopping"
  remove_all
  unset DOCKER_HOST
  stop_daemon
  bench_unmount_below "$ddir"
  rm -rf "${ddir:?}"
  [ "$kind" = dockerd ] && replay_floor "$drv"
  return 0
}

# replay_floor <driver>: `docker create` against dockerd's recorded answers sent back at once by
# scripts/bench/replay-daemon.py (no daemon running): the docker CLI's own share of that figure.
replay_floor() {
  local drv=$1 rep=$BENCH_DIR/replay-$drv out=$RES/replay-$drv
  mkdir -p "$out"
  [ -f "$rep/create.body" ] || { echo "no recorded answers" > "$out/start.err"; return 0; }
  log "CLI alone: replaying dockerd's ($drv) answers"
  bench_replay_hf "$rep" "$out" "HEAD /_ping=ping" "POST /containers/create=create" -- \
    create "$D create --name bench-create --network none busybox true"
}

for drv in $DRIVERS; do
  case $drv in overlay) dd=overlay2 ;; *) dd=$drv ;; esac
  bench_daemon dockerd "$dd"
  bench_daemon stratad "$drv"
done

# ---------------------------------------------------------------- report
STRATAD_REV=$(bench_stratad_rev)
MACHINE=$(bench_machine)
VERSIONS="docker CLI $("$D" --version | awk '{print $3}' | tr -d ,), dockerd $("$DOCKERD" --version 2>/dev/null | awk '{print $3}' | tr -d ,) with containerd $(PATH=$DAEMON_PATH containerd --version 2>/dev/null | awk '{print $3}'), runc $("$RUNC" --version | awk 'NR==1{print $3}') ($RUNC, for both), docker-registry $("$REGISTRY_BIN" --version 2>/dev/null | awk '{print $3}'), stratad $STRATAD_REV, hyperfine $(hyperfine --version | awk '{print $2}')"

python3 - "$RES" "$DRIVERS" "$RUNS" "$STATS_CONTAINERS" "$CLIENTS" "$CHURN_SECONDS" "$CHURN_ROUNDS" "$SETTLE" "$MACHINE" "$VERSIONS" > "$BENCH_DIR/report.md" <<'PY'
import json, os, sys
sys.path.insert(0, "scripts/bench")
from report import Results, fmt, mib, ratio
res, drivers, runs, nstats, clients, secs, rounds, settle, machine, versions = sys.argv[1:]
drivers = drivers.split()
R = Results(res)
read, median_ms, error = R.read, R.median_ms, R.error

print(f"Machine: {machine}.  ")
print(f"Software: {versions}.  ")
print(f"Each time is the median of {runs} hyperfine runs (after 3 warm-ups) and includes starting the docker CLI process (see `docker version`). "
      f"`docker stats --no-stream` runs with {nstats} running `sleep` containers. Churn: {clients} concurrent API clients, "
      f"create/start/wait/rm cycles for {secs} s, {rounds} rounds, {settle} s settle after each. "
      f"Pushed to the registry by {read(os.path.join(res, 'pushed-by.txt')) or '?'}.")
print()
goals = {"create": 0.5, "run": 0.5, "commit": 0.5, "pull": 0.7}
verdicts, failures = [], []
for drv in drivers:
    dd = "overlay2" if drv == "overlay" else drv
    dk, sk = f"dockerd-{dd}", f"stratad-{drv}"
    print(f"### {drv} (dockerd `{dd}`, stratad `{drv}`)")
    print()
    for k in (dk, sk):
        if read(os.path.join(res, k, "start.err")):
            print(f"**{k} did not start**; see the script's output.\n")
    print("| operation | dockerd 20.10 | stratad | stratad/dockerd | goal |")
    print("|---|---:|---:|---:|---|")
    ops = [("version", "`docker version` (CLI baseline)"), ("create", "`docker create` (rm outside the timing)"),
           ("rm", "`docker rm` of a created container"), ("run", "`docker run --rm busybox true`"),
           ("commit", "`docker commit` (a few changed files)"), ("pull", "`docker pull` 3 layers from the local registry"),
           ("stats", f"`docker stats --no-stream`, {nstats} running")]
    for op, label in ops:
        d, s = median_ms(dk, op), median_ms(sk, op)
        r = ratio(s, d)
        if op in goals:
            g = goals[op]
            goal = ("n/a" if r is None else ("met" if r <= g else "not met")) + f" (<= {g:.2f})"
            verdicts.append((drv, op, goal))
        else:
            goal = "(baseline)" if op == "version" else ""
        for k, v in ((dk, d), (sk, s)):
            if v is None:
                failures.append(f"{k} {op}: {error(k, op)}")
        print(f"| {label} | {fmt(d)} | {fmt(s)} | {fmt(r, '')} | {goal} |")
    print()
    f, d = median_ms(f"replay-{dd}", "create"), median_ms(dk, "create")
    if f is None:
        failures.append(f"replay-{dd} create: {error(f'replay-{dd}', 'create')}")
    else:
        r = ratio(f, d)
        print(f"CLI alone, `docker create`, dockerd's recorded answers replayed with no daemon work: {fmt(f)}"
              + (f" = {r:.2f} of dockerd's time" if r is not None else "")
              + (": no daemon behind this CLI can reach 0.50" if r is not None and r > 0.5 else "") + ".\n")
    churn = {}
    for k in (dk, sk):
        t = read(os.path.join(res, k, "churn.json"))
        churn[k] = json.loads(t) if t else None
        if not t:
            failures.append(f"{k} churn: {error(k, 'churn')}")
    print(f"Churn ({clients} clients, {secs} s per round):\n")
    print("| | dockerd 20.10 | stratad |")
    print("|---|---:|---:|")
    def row(label, f):
        vals = []
        for k in (dk, sk):
            try:
                vals.append(f(churn[k], k) if churn[k] else "failed")
            except (KeyError, TypeError, ValueError, IndexError):
                vals.append("?")
        print(f"| {label} | {vals[0]} | {vals[1]} |")
    nr = int(rounds)
    for i in range(nr):
        row(f"round {i + 1}: cycles (create+start+wait+rm), cycles/s", lambda c, k, i=i: f"{c['rounds'][i]['cycles']}, {c['rounds'][i]['cycles_per_s']:.1f}/s")
        row(f"round {i + 1}: cycle median / p95", lambda c, k, i=i: "no cycle completed" if c["rounds"][i]["cycle_median_s"] is None
            else f"{c['rounds'][i]['cycle_median_s'] * 1000:.0f} / {c['rounds'][i]['cycle_p95_s'] * 1000:.0f} ms")
    row("errors", lambda c, k: str(c["errors"]) + ("" if not c["errors"] else ": " + "; ".join(f"{n}x {m}" for r in c["rounds"] for m, n in r["error_messages"].items())[:300]))
    row("open fds: before / peak / settled after each round",
        lambda c, k: f"{c['before']['fds']} / {max(r['peak']['fds'] for r in c['rounds'])} / " + ", ".join(str(r["settled"]["fds"]) for r in c["rounds"]))
    row("RSS: before / peak / settled after each round",
        lambda c, k: f"{mib(c['before']['rss_kib'])} / {mib(max(r['peak']['rss_kib'] for r in c['rounds']))} / " + ", ".join(mib(r["settled"]["rss_kib"]) for r in c["rounds"]))
    row("fd growth, settled last round - before", lambda c, k: f"{c['rounds'][-1]['settled']['fds'] - c['before']['fds']:+d}")
    row("RSS growth, settled last round - settled first round", lambda c, k: f"{(c['rounds'][-1]['settled']['rss_kib'] - c['rounds'][0]['settled']['rss_kib']) / 1024:+.1f} MiB")
    row("anonymous RSS (RssAnon): before / settled after each round",
        lambda c, k: f"{mib(c['before']['anon_kib'])} / " + ", ".join(mib(r["settled"]["anon_kib"]) for r in c["rounds"]))
    row("containers left over / mounts below the data root before, after",
        lambda c, k: f"{c['leftover_containers']} / {read(os.path.join(res, k, 'mounts-before-churn.txt'))}, {read(os.path.join(res, k, 'mounts-after-churn.txt'))}")
    print()
    for k in (dk, sk):
        l0, l1 = read(os.path.join(res, k, "load-start.txt")), read(os.path.join(res, k, "load-end.txt"))
        pl, run_n = read(os.path.join(res, k, "pull-layers.txt")), read(os.path.join(res, k, "stats-running.txt"))
        print(f"{k}: {read(os.path.join(res, k, 'info.txt'))}; processes measured: {read(os.path.join(res, k, 'procs.txt'))}; "
              f"idle RSS {mib(int(read(os.path.join(res, k, 'rss-idle.txt')) or 0))}; pulled image has {pl} layers; {run_n} containers running for stats; "
              f"1-minute load average {l0} at the start, {l1} at the end.  ")
    print()
met = sum(1 for v in verdicts if v[2].startswith("met"))
print(f"Goals met: {met} of {len(verdicts)}.", end="")
notmet = [f"{d} {l}" for d, l, g in verdicts if not g.startswith("met")]
print(" Not met: " + "; ".join(notmet) + "." if notmet else "")
if failures:
    print("\nFailures:\n")
    for f in failures:
        print(f"- {f}")
PY
cat "$BENCH_DIR/report.md"
if [ -n "$REPORT" ]; then cp "$BENCH_DIR/report.md" "$REPORT"; log "report written to $REPORT"; fi
