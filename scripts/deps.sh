#!/usr/bin/env bash
# Installs the Debian 12 packages the Strata test suite needs, as root.
#
# Idempotent: packages that are already installed are skipped, and when nothing is missing
# the script touches nothing (no `apt-get update`). While apt runs, /usr/sbin/policy-rc.d
# answers 101 so that no service (containerd, ...) is started by the package scripts; the
# previous policy-rc.d, or its absence, is restored afterwards.
#
# The Rust toolchain itself (cargo, rustc >= 1.85) is not a Debian 12 package at that
# version: install it with rustup beforehand.
#
# Usage: scripts/deps.sh            Env: STRATA_EXTRA_PACKAGES="pkg ..." to add more.
set -euo pipefail

PKGS=(
  containerd      # peer for the interop tests (containerd 1.6 + ctr)
  runc            # OCI runtime for containerd and the engine
  busybox-static  # /usr/bin/busybox: the test images are built from it
  e2fsprogs       # mkfs.ext4, for block-backed snapshots
  xfsprogs        # mkfs.xfs (reflink-capable backing files)
  fuse3           # fusermount3 and /dev/fuse users
  kmod            # modprobe (overlay, loop, fuse)
  util-linux      # losetup, mount, nsenter
  openssl         # test certificates
  curl            # talking to unix-socket HTTP APIs in scripts
  docker-registry # Distribution registry on 127.0.0.1 for the pull/push tests
  docker.io       # dockerd 20.10: saved images must load there and back
  tmux
  python3         # docker SDK integration tests (engine_docker_py): pytest in a venv,
  python3-venv    #   packages pinned in tests/pysdk/requirements.txt, installed from PyPI
  ca-certificates
  gcc             # the linker cargo calls
  libc6-dev
  pkg-config
)
# shellcheck disable=SC2206
PKGS+=(${STRATA_EXTRA_PACKAGES:-})

installed() { [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = installed ]; }

missing=()
for p in "${PKGS[@]}"; do
  installed "$p" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "deps: all ${#PKGS[@]} packages already installed"
else
  [ "$(id -u)" = 0 ] || { echo "deps: must run as root to install: ${missing[*]}" >&2; exit 1; }
  command -v apt-get >/dev/null || { echo "deps: apt-get not found; install by hand: ${missing[*]}" >&2; exit 1; }

  POLICY=/usr/sbin/policy-rc.d
  SAVED=""
  if [ -e "$POLICY" ] || [ -L "$POLICY" ]; then
    SAVED=$(mktemp -d /tmp/strata-policy-rc.d.XXXXXX)
    cp -a "$POLICY" "$SAVED/"
  fi
  restore_policy() {
    if [ -n "$SAVED" ]; then
      rm -f "$POLICY"; cp -a "$SAVED/policy-rc.d" "$POLICY"; rm -rf "$SAVED"
    else
      rm -f "$POLICY"
    fi
  }
  trap restore_policy EXIT
  rm -f "$POLICY"   # never write through a symlink
  printf '#!/bin/sh\n# installed by strata scripts/deps.sh while apt runs\nexit 101\n' > "$POLICY"
  chmod 755 "$POLICY"

  export DEBIAN_FRONTEND=noninteractive
  APT=(apt-get -o DPkg::Lock::Timeout=600 -o Dpkg::Use-Pty=0)
  echo "deps: installing ${missing[*]}"
  "${APT[@]}" update -q
  "${APT[@]}" install -y -q --no-install-recommends "${missing[@]}"

  still=()
  for p in "${missing[@]}"; do installed "$p" || still+=("$p"); done
  if [ ${#still[@]} -ne 0 ]; then
    echo "deps: still missing after install: ${still[*]}" >&2
    exit 1
  fi
fi

# Kernel modules the tests use; built in on many kernels, so a failed modprobe is only a note.
for m in overlay loop fuse; do
  if ! grep -qw "$m" /proc/filesystems /proc/modules 2>/dev/null && [ ! -e "/sys/module/$m" ]; then
    modprobe "$m" 2>/dev/null || echo "deps: note: kernel module $m not loaded and modprobe failed" >&2
  fi
done

for tool in cargo rustc; do
  command -v "$tool" >/dev/null || { echo "deps: $tool not found: install Rust (>= 1.85) with rustup" >&2; exit 1; }
done
echo "deps: ok"
