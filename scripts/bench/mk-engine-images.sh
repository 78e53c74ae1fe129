#!/usr/bin/env bash
# Builds the benchmark images for scripts/bench-engine.sh from the static busybox binary,
# byte-for-byte reproducibly (fixed mtimes, owners and order, gzip without a timestamp):
#   OUT/rootfs.tar.gz   plain rootfs (bin/busybox, one symlink per applet, etc/passwd,
#                       etc/group) for `docker import`
#   OUT/load.tar        docker-archive (manifest.json, <config>.json, <diff-id>/layer.tar)
#                       of the same rootfs, tagged bench/load:latest, for `docker load`
# Usage: scripts/bench/mk-engine-images.sh OUT_DIR [BUSYBOX]   (BUSYBOX default /bin/busybox)
set -euo pipefail
OUT=${1:?usage: mk-engine-images.sh OUT_DIR [BUSYBOX]}
BUSYBOX=${2:-/bin/busybox}
[ -x "$BUSYBOX" ] || { echo "no busybox at $BUSYBOX: apt-get install busybox-static" >&2; exit 1; }
file -L "$BUSYBOX" 2>/dev/null | grep -q 'statically linked' || [ ! -x /usr/bin/file ] ||
  { echo "$BUSYBOX is not statically linked: apt-get install busybox-static" >&2; exit 1; }
mkdir -p "$OUT"
WORK=$(mktemp -d "$OUT/.mk.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# deterministic tar of a directory's contents to stdout
dtar() { tar -C "$1" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=gnu -cf - .; }

R=$WORK/rootfs
mkdir -p "$R/bin" "$R/etc" "$R/tmp" "$R/root"
chmod 1777 "$R/tmp"; chmod 700 "$R/root"
cp "$BUSYBOX" "$R/bin/busybox"; chmod 755 "$R/bin/busybox"
for applet in $("$BUSYBOX" --list); do
  [ "$applet" = busybox ] || ln -s busybox "$R/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$R/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$R/etc/group"
chmod 644 "$R/etc/passwd" "$R/etc/group"
touch -h -d @0 "$R" "$R"/* "$R"/*/* 2>/dev/null || true

dtar "$R" > "$WORK/layer.tar"
gzip -n -9 < "$WORK/layer.tar" > "$OUT/rootfs.tar.gz"

DIFF=$(sha256sum "$WORK/layer.tar" | cut -d' ' -f1)
A=$WORK/archive
mkdir -p "$A/$DIFF"
mv "$WORK/layer.tar" "$A/$DIFF/layer.tar"
printf '%s' '{"architecture":"amd64","os":"linux","created":"1970-01-01T00:00:00Z",'\
'"config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["sh"]},'\
'"history":[{"created":"1970-01-01T00:00:00Z","created_by":"mk-engine-images.sh: busybox rootfs"}],'\
"\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"sha256:$DIFF\"]}}" > "$WORK/config.json"
CFG=$(sha256sum "$WORK/config.json" | cut -d' ' -f1)
mv "$WORK/config.json" "$A/$CFG.json"
printf '[{"Config":"%s.json","RepoTags":["bench/load:latest"],"Layers":["%s/layer.tar"]}]' "$CFG" "$DIFF" > "$A/manifest.json"
find "$A" -exec touch -h -d @0 {} +
dtar "$A" > "$OUT/load.tar"
echo "images in $OUT: rootfs.tar.gz ($(stat -c %s "$OUT/rootfs.tar.gz") bytes), load.tar ($(stat -c %s "$OUT/load.tar") bytes, image sha256:$CFG)"
