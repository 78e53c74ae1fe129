#!/usr/bin/env python3
"""Events fan-out benchmark for a Docker API daemon (stratad or dockerd).

Starts SUBSCRIBERS `docker events --filter type=image --filter event=tag` processes (the real
docker CLI), waits until every one of them has seen a marker event, then sends EVENTS tag
requests (POST /images/{ref}/tag) over one keep-alive connection on the daemon's unix socket
and measures the time until every subscriber has printed all EVENTS tag events of the round.
The round's tags are removed afterwards. Repeated ROUNDS times; prints one JSON object with
the per-round times, their median and the delivered events per second.

Usage: events-fanout.py --socket PATH --image REF [--docker CLI] [--subscribers 50]
                        [--events 100] [--rounds 5] [--timeout 60]
"""
import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from unixhttp import UnixHTTPConnection  # noqa: E402

API = "/v1.41"


class Api:
    def __init__(self, path, timeout):
        self.path, self.timeout = path, timeout
        self.conn = UnixHTTPConnection(path, timeout)

    def call(self, method, url, ok=(200, 201, 204)):
        for attempt in (0, 1):
            try:
                self.conn.request(method, API + url, headers={"Content-Length": "0"})
                resp = self.conn.getresponse()
                body = resp.read()
                break
            except (http.client.HTTPException, OSError):
                # the daemon may close an idle keep-alive connection: reconnect once
                self.conn.close()
                self.conn = UnixHTTPConnection(self.path, self.timeout)
                if attempt:
                    raise
        if resp.status not in ok:
            raise RuntimeError(f"{method} {url}: HTTP {resp.status}: {body[:300]!r}")
        return body

    def tag(self, image, repo, tag):
        q = urllib.parse.urlencode({"repo": repo, "tag": tag})
        self.call("POST", f"/images/{urllib.parse.quote(image, safe='/:@')}/tag?{q}")

    def untag(self, ref):
        self.call("DELETE", f"/images/{urllib.parse.quote(ref, safe='/:@')}", ok=(200,))


class Subscriber:
    """One `docker events` process and a thread counting the lines that carry a token."""

    def __init__(self, docker, host):
        env = dict(os.environ, DOCKER_HOST=host)
        self.proc = subprocess.Popen(
            [docker, "events", "--filter", "type=image", "--filter", "event=tag", "--format", "{{json .}}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True, bufsize=1)
        self.lock = threading.Lock()
        self.lines = []
        self.cond = threading.Condition(self.lock)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line)
                self.cond.notify_all()

    def count(self, token):
        with self.lock:
            return sum(1 for line in self.lines if token in line)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        err = self.proc.stderr.read().strip() if self.proc.stderr else ""
        return err


def wait_all(subs, token, want, deadline):
    """Waits until each subscriber has `want` lines containing `token`; returns when they have."""
    while True:
        if all(s.count(token) >= want for s in subs):
            return True
        if time.monotonic() > deadline:
            return False
        for s in subs:
            if s.proc.poll() is not None:
                raise RuntimeError(f"a docker events subscriber exited: {s.stop()}")
        time.sleep(0.002)


def one_round(args, api, rnd, host):
    subs = [Subscriber(args.docker, host) for _ in range(args.subscribers)]
    made = []
    try:
        # readiness: tag markers until every subscriber has printed one (the CLI connects lazily)
        start = time.monotonic()
        n = 0
        while True:
            marker = f"ready{rnd}x{n}"
            api.tag(args.image, "bench/fanout", marker)
            made.append(f"bench/fanout:{marker}")
            if wait_all(subs, f"ready{rnd}x", 1, time.monotonic() + 1.0):
                break
            n += 1
            if time.monotonic() - start > args.timeout:
                ready = sum(1 for s in subs if s.count(f"ready{rnd}x") >= 1)
                raise RuntimeError(f"only {ready}/{len(subs)} subscribers saw a marker event")
        token = f"r{rnd}e"
        t0 = time.monotonic()
        for i in range(args.events):
            api.tag(args.image, "bench/fanout", f"{token}{i}")
            made.append(f"bench/fanout:{token}{i}")
        t_sent = time.monotonic()
        if not wait_all(subs, f":{token}", args.events, t0 + args.timeout):
            got = min(s.count(f":{token}") for s in subs)
            raise RuntimeError(f"timeout: the slowest subscriber saw {got}/{args.events} events")
        t_all = time.monotonic()
        return {"send_s": t_sent - t0, "deliver_all_s": t_all - t0}
    finally:
        for s in subs:
            s.stop()
        for ref in made:
            try:
                api.untag(ref)
            except Exception as e:  # keep cleaning the rest
                print(f"warning: untag {ref}: {e}", file=sys.stderr)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--socket", required=True, help="the daemon's unix socket path")
    p.add_argument("--image", required=True, help="an existing image to tag")
    p.add_argument("--docker", default="/usr/local/bin/docker")
    p.add_argument("--subscribers", type=int, default=50)
    p.add_argument("--events", type=int, default=100)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--timeout", type=float, default=60.0)
    args = p.parse_args()
    if args.subscribers < 1 or args.events < 1 or args.rounds < 1:
        p.error("--subscribers, --events and --rounds must be at least 1")
    if not os.path.exists(args.socket):
        p.error(f"no socket at {args.socket}")
    host = "unix://" + args.socket
    api = Api(args.socket, args.timeout)
    rounds = []
    for rnd in range(args.rounds):
        rounds.append(one_round(args, api, rnd, host))
    deliver = [r["deliver_all_s"] for r in rounds]
    med = statistics.median(deliver)
    print(json.dumps({
        "subscribers": args.subscribers,
        "events": args.events,
        "rounds": rounds,
        "median_deliver_all_s": med,
        "median_send_s": statistics.median(r["send_s"] for r in rounds),
        "delivered_events_per_s": args.subscribers * args.events / med,
    }))


if __name__ == "__main__":
    try:
        main()
    except RuntimeError as e:
        print(f"events-fanout: {e}", file=sys.stderr)
        sys.exit(1)
