#!/usr/bin/env python3
"""Builds a byte-reproducible docker-archive with three layers for the pull benchmark.

  layer 1  a busybox rootfs (bin/busybox, one symlink per applet, etc/passwd, etc/group)
           plus etc/bench-layered, so that its diff ID differs from the plain busybox images
  layer 2  usr/share/bench/blob-a: BLOB_A_KIB of pseudo-random (incompressible) bytes
  layer 3  usr/share/bench/blob-b: BLOB_B_KIB of pseudo-random bytes and etc/motd

Every entry has mtime 0, owner 0:0 and a fixed order, so the same busybox binary always gives
the same layers, config and image ID. The archive (manifest.json, <config>.json,
<diff-id>/layer.tar) is what `docker load` takes; the image is tagged TAG.

Usage: mk-layered-image.py OUT.tar [--busybox /bin/busybox] [--tag bench/three:latest]
                           [--blob-a-kib 2048] [--blob-b-kib 1024]
"""
import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile


def entry(name, kind=tarfile.REGTYPE, mode=0o644, size=0, link=""):
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.size, ti.linkname = kind, mode, size, link
    ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = 0, 0, 0, "", ""
    return ti


def layer_tar(items):
    """items: list of (TarInfo, bytes or None), in the order given; returns the tar bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for ti, data in items:
            tar.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def pseudo_random(seed, size):
    """size bytes from a SHA-256 counter stream: deterministic and incompressible."""
    out = bytearray()
    n = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{n}".encode()).digest()
        n += 1
    return bytes(out[:size])


def file_item(name, data, mode=0o644):
    return entry(name, mode=mode, size=len(data)), data


def dir_item(name, mode=0o755):
    return entry(name, kind=tarfile.DIRTYPE, mode=mode), None


def busybox_layer(busybox):
    with open(busybox, "rb") as f:
        binary = f.read()
    try:
        applets = subprocess.run([busybox, "--list"], check=True, capture_output=True, text=True).stdout.split()
    except (OSError, subprocess.CalledProcessError) as e:
        raise RuntimeError(f"{busybox} --list failed: {e}")
    items = [dir_item("bin"), file_item("bin/busybox", binary, 0o755)]
    for applet in sorted(set(applets) - {"busybox"}):
        items.append((entry(f"bin/{applet}", kind=tarfile.SYMTYPE, mode=0o777, link="busybox"), None))
    items += [
        dir_item("etc"),
        file_item("etc/bench-layered", b"layer 1 of the three-layer benchmark image\n"),
        file_item("etc/group", b"root:x:0:\nnogroup:x:65534:\n"),
        file_item("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"),
        dir_item("root", 0o700),
        dir_item("tmp", 0o1777),
    ]
    return layer_tar(items)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--busybox", default="/bin/busybox")
    p.add_argument("--tag", default="bench/three:latest")
    p.add_argument("--blob-a-kib", type=int, default=2048)
    p.add_argument("--blob-b-kib", type=int, default=1024)
    args = p.parse_args()
    if args.blob_a_kib < 1 or args.blob_b_kib < 1:
        p.error("--blob-a-kib and --blob-b-kib must be at least 1")
    if ":" not in args.tag.rsplit("/", 1)[-1]:
        p.error(f"--tag must be NAME:TAG (got {args.tag!r})")
    if not os.access(args.busybox, os.X_OK):
        raise RuntimeError(f"no busybox at {args.busybox}: apt-get install busybox-static")

    layers = [
        busybox_layer(args.busybox),
        layer_tar([dir_item("usr"), dir_item("usr/share"), dir_item("usr/share/bench"),
                   file_item("usr/share/bench/blob-a", pseudo_random("a", args.blob_a_kib * 1024))]),
        layer_tar([dir_item("etc"), file_item("etc/motd", b"three-layer benchmark image\n"),
                   dir_item("usr"), dir_item("usr/share"), dir_item("usr/share/bench"),
                   file_item("usr/share/bench/blob-b", pseudo_random("b", args.blob_b_kib * 1024))]),
    ]
    diff_ids = ["sha256:" + hashlib.sha256(l).hexdigest() for l in layers]
    created = "1970-01-01T00:00:00Z"
    config = {
        "architecture": "amd64", "os": "linux", "created": created,
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["sh"]},
        "history": [{"created": created, "created_by": f"mk-layered-image.py: layer {i + 1}"} for i in range(3)],
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    config_hex = hashlib.sha256(config_bytes).hexdigest()
    manifest = [{"Config": f"{config_hex}.json", "RepoTags": [args.tag],
                 "Layers": [f"{d[7:]}/layer.tar" for d in diff_ids]}]

    items = [file_item(f"{config_hex}.json", config_bytes)]
    for d, data in zip(diff_ids, layers):
        items += [dir_item(d[7:]), file_item(f"{d[7:]}/layer.tar", data)]
    items.append(file_item("manifest.json", json.dumps(manifest, separators=(",", ":")).encode()))
    tmp = args.out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(layer_tar(items))
    os.replace(tmp, args.out)
    print(f"{args.out}: {args.tag}, image sha256:{config_hex}, layers "
          + ", ".join(f"{len(l)} bytes" for l in layers))


if __name__ == "__main__":
    try:
        main()
    except RuntimeError as e:
        print(f"mk-layered-image: {e}", file=sys.stderr)
        sys.exit(1)
