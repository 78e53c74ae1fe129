#!/usr/bin/env python3
"""Concurrent container churn against a Docker API daemon (stratad or dockerd).

CLIENTS threads, each with its own keep-alive connection on the daemon's unix socket, loop for
SECONDS: create a container (IMAGE, `true`, network none), start it, wait for it to stop
(POST /containers/{id}/wait), remove it (DELETE ?force=1&v=1). Every request that does not get
its success status (or raises) is an error; a cycle with an error still removes its container.
This is repeated ROUNDS times with a SETTLE pause after each round.

The daemon's open file descriptors (/proc/PID/fd) and VmRSS are sampled for the given PIDs
(summed): before the first round, every second during the rounds (the peak is kept), right
after each round and after each settle pause. At the end the containers whose names carry this
run's prefix are counted (0 expected) and the daemon's total container count is compared with
the one before.

Prints one JSON object. Exit status 0 when the load ran (errors are reported in the JSON, not
as a failure), 1 when it could not run at all.

Usage: container-churn.py --socket PATH --image REF --pids PID[,PID...] [--clients 32]
                          [--seconds 60] [--rounds 2] [--settle 10] [--timeout 120]
"""
import argparse
import http.client
import json
import os
import re
import sys
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from unixhttp import UnixHTTPConnection  # noqa: E402

API = "/v1.41"


class ApiError(Exception):
    pass


class Api:
    """One keep-alive connection; a request that fails at the transport level reconnects once
    only when nothing was sent yet (a stale idle connection), never retrying a sent request."""

    def __init__(self, path, timeout):
        self.path, self.timeout = path, timeout
        self.conn = None

    def call(self, method, url, body=None, ok=(200, 201, 204)):
        data = json.dumps(body).encode() if body is not None else b""
        headers = {"Content-Length": str(len(data))}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self.conn is None:
            self.conn = UnixHTTPConnection(self.path, self.timeout)
        try:
            self.conn.request(method, API + url, body=data, headers=headers)
            resp = self.conn.getresponse()
            payload = resp.read()
        except (http.client.HTTPException, OSError) as e:
            self.conn.close()
            self.conn = None
            raise ApiError(f"{method} {url.split('?')[0]}: {type(e).__name__}: {e}")
        if resp.getheader("Connection", "").lower() == "close":
            self.conn.close()
            self.conn = None
        if resp.status not in ok:
            raise ApiError(f"{method} {url.split('?')[0]}: HTTP {resp.status}: {payload[:200].decode(errors='replace').strip()}")
        return payload

    def close(self):
        if self.conn is not None:
            self.conn.close()


def sample(pids):
    """Open fds, VmRSS and RssAnon (VmRSS without file-backed pages such as the
    binary's code, which grows as new code paths run for the first time)."""
    fds = rss = anon = 0
    for pid in pids:
        try:
            fds += len(os.listdir(f"/proc/{pid}/fd"))
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
                    elif line.startswith("RssAnon:"):
                        anon += int(line.split()[1])
        except OSError as e:
            raise RuntimeError(f"cannot sample process {pid}: {e}")
    return {"fds": fds, "rss_kib": rss, "anon_kib": anon}


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.cycles = 0
        self.ops = 0
        self.errors = 0
        self.messages = {}
        self.cycle_times = []

    def ok(self, n_ops, seconds):
        with self.lock:
            self.cycles += 1
            self.ops += n_ops
            self.cycle_times.append(seconds)

    def error(self, msg, n_ops):
        # group by kind: container IDs and names differ in every message
        key = re.sub(r"[0-9a-f]{64}|churn\d+r\d+-\d+-\d+", "<id>", msg)[:160]
        with self.lock:
            self.errors += 1
            self.ops += n_ops
            self.messages[key] = self.messages.get(key, 0) + 1


def client(idx, args, prefix, deadline, stats):
    api = Api(args.socket, args.timeout)
    n = 0
    try:
        while time.monotonic() < deadline:
            name = f"{prefix}-{idx}-{n}"
            n += 1
            t0 = time.monotonic()
            ops = 0
            cid = None
            try:
                out = api.call("POST", f"/containers/create?name={urllib.parse.quote(name)}",
                               {"Image": args.image, "Cmd": ["true"], "HostConfig": {"NetworkMode": "none"}},
                               ok=(201,))
                ops += 1
                cid = json.loads(out)["Id"]
                api.call("POST", f"/containers/{cid}/start", ok=(204,))
                ops += 1
                out = api.call("POST", f"/containers/{cid}/wait?condition=not-running", ok=(200,))
                ops += 1
                code = json.loads(out).get("StatusCode")
                if code != 0:
                    raise ApiError(f"container exited with {code}: {out[:200]!r}")
                api.call("DELETE", f"/containers/{cid}?force=1&v=1", ok=(204,))
                ops += 1
                cid = None
                stats.ok(ops, time.monotonic() - t0)
            except (ApiError, ValueError, KeyError) as e:
                stats.error(str(e), ops)
                target = cid or name
                try:
                    api.call("DELETE", f"/containers/{urllib.parse.quote(target)}?force=1&v=1", ok=(204, 404))
                except ApiError as e2:
                    stats.error(f"cleanup: {e2}", 0)
    finally:
        api.close()


def list_names(args):
    api = Api(args.socket, args.timeout)
    try:
        out = api.call("GET", "/containers/json?all=1", ok=(200,))
    finally:
        api.close()
    return [n.lstrip("/") for c in json.loads(out) for n in (c.get("Names") or [])]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--socket", required=True)
    p.add_argument("--image", required=True)
    p.add_argument("--pids", required=True, help="comma-separated PIDs whose fds and RSS are summed")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--settle", type=float, default=10.0)
    p.add_argument("--timeout", type=float, default=120.0, help="per-request socket timeout")
    args = p.parse_args()
    if args.clients < 1 or args.rounds < 1 or args.seconds <= 0 or args.settle < 0:
        p.error("--clients and --rounds must be at least 1, --seconds positive, --settle not negative")
    try:
        pids = [int(x) for x in args.pids.split(",") if x.strip()]
    except ValueError:
        p.error(f"--pids must be comma-separated integers (got {args.pids!r})")
    if not pids:
        p.error("--pids is empty")
    if not os.path.exists(args.socket):
        p.error(f"no socket at {args.socket}")

    prefix = f"churn{os.getpid()}"
    containers_before = len(list_names(args))
    before = sample(pids)
    rounds = []
    for rnd in range(args.rounds):
        stats = Stats()
        peak = dict(before)
        start = time.monotonic()
        deadline = start + args.seconds
        threads = [threading.Thread(target=client, args=(i, args, f"{prefix}r{rnd}", deadline, stats), daemon=True)
                   for i in range(args.clients)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            s = sample(pids)
            peak = {k: max(peak[k], s[k]) for k in peak}
            for t in threads:
                t.join(timeout=1.0 / len(threads))
        elapsed = time.monotonic() - start
        after = sample(pids)
        time.sleep(args.settle)
        settled = sample(pids)
        times = sorted(stats.cycle_times)
        rounds.append({
            "elapsed_s": elapsed,
            "cycles": stats.cycles,
            "requests": stats.ops,
            "cycles_per_s": stats.cycles / elapsed,
            "requests_per_s": stats.ops / elapsed,
            "cycle_median_s": times[len(times) // 2] if times else None,
            "cycle_p95_s": times[min(len(times) - 1, int(len(times) * 0.95))] if times else None,
            "errors": stats.errors,
            "error_messages": stats.messages,
            "peak": peak,
            "after": after,
            "settled": settled,
        })
    names = list_names(args)
    leftover = sum(1 for n in names if n.startswith(prefix))
    print("; ".join(f"round {i + 1}: {r['cycles']} cycles ({r['cycles_per_s']:.1f}/s), {r['errors']} errors, "
                    f"fds {r['settled']['fds']}, RSS {r['settled']['rss_kib']} KiB (anon {r['settled']['anon_kib']})" for i, r in enumerate(rounds))
          + f"; before: fds {before['fds']}, RSS {before['rss_kib']} KiB (anon {before['anon_kib']}); {leftover} containers left over",
          file=sys.stderr)
    print(json.dumps({
        "clients": args.clients,
        "seconds": args.seconds,
        "rounds": rounds,
        "settle_s": args.settle,
        "before": before,
        "leftover_containers": leftover,
        "containers_before": containers_before,
        "containers_after": len(names),
        "errors": sum(r["errors"] for r in rounds),
    }))


if __name__ == "__main__":
    try:
        main()
    except (RuntimeError, ApiError) as e:
        print(f"container-churn: {e}", file=sys.stderr)
        sys.exit(1)
