#!/usr/bin/env python3
"""Answers Docker API requests on a unix socket with responses recorded from a real daemon.

Used by the benchmark scripts to measure the docker CLI's own cost for one command: with the
daemon's work taken away (every answer is a recorded file sent back at once), what is left of
a command's time is the CLI starting, sending its requests, decoding and printing. If that is
already more than half of a daemon's time, no daemon behind the same CLI can reach half.

  replay-daemon.py record --socket DAEMON.sock --dir DIR NAME METHOD PATH [BODY-JSON]
      sends one request to the running daemon and keeps its status line, headers and body as
      DIR/NAME.head and DIR/NAME.body. `{api}` in PATH is the daemon's API version.
  replay-daemon.py serve --socket PATH --dir DIR ROUTE...
      ROUTE is "METHOD /path=NAME" (the path without the /vX.Y prefix and the query string);
      answers those requests with the recorded NAME until killed. Anything else gets a 404
      and a line on stderr, so a command that needs more than was recorded fails visibly.
"""
import argparse
import asyncio
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from unixhttp import UnixHTTPConnection  # noqa: E402

VERSION_PREFIX = re.compile(r"^/v\d+\.\d+(?=/)")
DROPPED_HEADERS = {"content-length", "transfer-encoding", "connection", "date"}


def api_version(socket_path):
    conn = UnixHTTPConnection(socket_path)
    conn.request("GET", "/version")
    resp = conn.getresponse()
    data = resp.read()
    if resp.status != 200:
        sys.exit(f"GET /version answered {resp.status}: {data[:200]!r}")
    return json.loads(data)["ApiVersion"]


def record(args):
    os.makedirs(args.dir, exist_ok=True)
    if "{api}" in args.path:
        args.path = args.path.replace("{api}", api_version(args.socket))
    conn = UnixHTTPConnection(args.socket)
    headers = {}
    body = None
    if args.body is not None:
        body = args.body.encode()
        headers["Content-Type"] = "application/json"
    conn.request(args.method, args.path, body=body, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    if resp.status >= 400:
        sys.exit(f"record {args.name}: {args.method} {args.path} answered {resp.status}: {data[:200]!r}")
    head = [f"HTTP/1.1 {resp.status} {resp.reason}"]
    head += [f"{k}: {v}" for k, v in resp.getheaders() if k.lower() not in DROPPED_HEADERS]
    with open(os.path.join(args.dir, args.name + ".head"), "w") as f:
        f.write("\r\n".join(head))
    with open(os.path.join(args.dir, args.name + ".body"), "wb") as f:
        f.write(data)
    print(f"recorded {args.name}: {resp.status}, {len(data)} bytes", file=sys.stderr)


def load_routes(args):
    routes = {}
    for r in args.routes:
        key, sep, name = r.rpartition("=")
        method, _, path = key.partition(" ")
        if not sep or not method or not path.startswith("/") or not name:
            sys.exit(f"bad route {r!r}: expected \"METHOD /path=NAME\"")
        with open(os.path.join(args.dir, name + ".head")) as f:
            head = f.read().split("\r\n")
        with open(os.path.join(args.dir, name + ".body"), "rb") as f:
            body = f.read()
        lines = head + [f"Content-Length: {len(body)}", "", ""]
        # A HEAD answer carries the length of the body a GET would get, and no body.
        routes[(method.upper(), path)] = ("\r\n".join(lines).encode(), b"" if method.upper() == "HEAD" else body)
    return routes


async def serve_conn(reader, writer, routes):
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = (lines[0].split(" ") + ["", ""])[:3]
            length = 0
            for line in lines[1:]:
                k, _, v = line.partition(":")
                if k.strip().lower() == "content-length":
                    length = int(v.strip())
                if k.strip().lower() == "transfer-encoding" and "chunked" in v.lower():
                    print(f"replay: chunked request body not supported: {method} {target}", file=sys.stderr)
                    return
            if length:
                await reader.readexactly(length)
            path = VERSION_PREFIX.sub("", target.split("?", 1)[0])
            answer = routes.get((method, path))
            if answer is None:
                print(f"replay: nothing recorded for {method} {target}", file=sys.stderr)
                msg = b'{"message":"not recorded"}'
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
                             + f"Content-Length: {len(msg)}\r\n\r\n".encode() + msg)
            else:
                writer.write(answer[0] + answer[1])
            await writer.drain()
    finally:
        writer.close()


async def serve(args):
    routes = load_routes(args)
    if os.path.exists(args.socket):
        os.unlink(args.socket)
    server = await asyncio.start_unix_server(lambda r, w: serve_conn(r, w, routes), path=args.socket)
    async with server:
        await server.serve_forever()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record")
    r.add_argument("--socket", required=True)
    r.add_argument("--dir", required=True)
    r.add_argument("name")
    r.add_argument("method")
    r.add_argument("path")
    r.add_argument("body", nargs="?")
    s = sub.add_parser("serve")
    s.add_argument("--socket", required=True)
    s.add_argument("--dir", required=True)
    s.add_argument("routes", nargs="+")
    args = p.parse_args()
    if args.cmd == "record":
        record(args)
    else:
        try:
            asyncio.run(serve(args))
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
