#!/usr/bin/env bash
# Godot 4 headless for the tests and the demo, from Debian's own packages.
#
# Debian stable only packages Godot 3, so Godot 4 lives in a Debian sid chroot cached OUTSIDE the
# checkout (${MOTIONVAE_CACHE:-$HOME/.cache/motionvae}/godot-chroot, ~1 GB, about 2 minutes to build
# once). Every later call is instant. An interrupted install resumes where it stopped.
#
#   bash scripts/godot.sh                          install when missing, then print how to run Godot
#   bash scripts/godot.sh run PROJECT [ARGS...]    run `godot --headless --path PROJECT ARGS...`
#
# `run` shows PROJECT inside the chroot at /project through a bind mount made in a private mount
# namespace (unshare -m): the kernel drops the mounts when Godot exits, even on kill -9, so nothing is
# left mounted. Paths in ARGS should be res:// paths or relative to PROJECT. Loopback is shared with
# the host, so Godot reaches a server started on the host at 127.0.0.1.
#
# Set GODOT=/path/to/godot4 to use a Godot 4 you already have instead of the chroot.
# Exit codes: 0 ok, 2 Godot 4 cannot be installed here (not root, no network to Debian, ...).
set -euo pipefail

CACHE=${MOTIONVAE_CACHE:-$HOME/.cache/motionvae}
ROOT=$CACHE/godot-chroot
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SELF=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")

die() { echo "error: $*" >&2; exit 2; }

# The ready marker is named after the package list, so a cached chroot gets newly listed packages
# installed on the next call instead of being rebuilt.
PACKAGES="godot ca-certificates"
READY=$ROOT/.motionvae-ready-$(echo "$PACKAGES" | sha256sum | cut -c1-12)

installed() { [ -n "${GODOT:-}" ] || [ -f "$READY" ]; }

install_chroot() {
  [ "$(id -u)" = 0 ] || die "installing Godot 4 needs root (debootstrap and chroot); or set GODOT=/path/to/godot4"
  unshare -m true 2>/dev/null || die "unshare -m is not permitted here, so the chroot cannot be used; set GODOT=/path/to/godot4"
  mkdir -p "$CACHE"
  # One installer at a time: parallel test runs would otherwise debootstrap into the same folder.
  exec 9>"$CACHE/godot-chroot.lock"
  flock 9
  installed && return 0
  local log=$CACHE/godot-install.log
  : >"$log"
  if ! command -v debootstrap >/dev/null; then
    echo "installing debootstrap ..." >&2
    { apt-get update -qq && apt-get install -y -qq debootstrap; } >>"$log" 2>&1 \
      || die "apt-get install debootstrap failed; see $log"
  fi
  if [ ! -f "$ROOT/.debootstrap-done" ]; then
    echo "building a Debian sid chroot for Godot 4 in $ROOT (first run only, ~2 minutes) ..." >&2
    rm -rf "$ROOT"
    # debootstrap mounts /proc inside the target; a private mount namespace guarantees those mounts
    # go away with the process, even if it is interrupted.
    unshare -m --propagation private debootstrap --variant=minbase sid "$ROOT" "$MIRROR" >>"$log" 2>&1 \
      || die "debootstrap failed; see $log"
    touch "$ROOT/.debootstrap-done"
  fi
  echo "installing $PACKAGES in the chroot ..." >&2
  cp /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
  # Mirrors and snapshots may serve a sid Release file past its Valid-Until date; its signature is
  # still checked.
  echo 'Acquire::Check-Valid-Until "false";' >"$ROOT/etc/apt/apt.conf.d/99motionvae-no-expiry"
  unshare -m --propagation private sh -c '
    mount -t proc proc "$1/proc" && mount --rbind /dev "$1/dev" &&
    chroot "$1" sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $2 && apt-get clean"
  ' sh "$ROOT" "$PACKAGES" >>"$log" 2>&1 || die "installing $PACKAGES in the chroot failed; see $log"
  chroot "$ROOT" godot --version >/dev/null 2>&1 || die "godot does not start inside the chroot; see $log"
  mkdir -p "$ROOT/project"
  rm -f "$ROOT"/.motionvae-ready-*
  touch "$READY"
}

run_godot() {
  [ $# -ge 1 ] || die "usage: bash scripts/godot.sh run PROJECT [GODOT ARGS...]"
  local project
  project=$(cd "$1" 2>/dev/null && pwd) || die "no project folder $1"
  shift
  if [ -n "${GODOT:-}" ]; then
    exec "$GODOT" --headless --path "$project" "$@"
  fi
  installed || die "Godot 4 is not installed yet; run: bash scripts/godot.sh"
  # HOME inside the chroot keeps Godot's editor settings and logs out of the host's home.
  exec unshare -m --propagation private sh -c '
    root=$1; project=$2; shift 2
    mount --bind "$project" "$root/project" && mount -t proc proc "$root/proc" && mount --rbind /dev "$root/dev" &&
    exec chroot "$root" env HOME=/tmp/godot-home XDG_CACHE_HOME=/tmp/godot-home/cache godot --headless --path /project "$@"
  ' sh "$ROOT" "$project" "$@"
}

case "${1:-install}" in
  install)
    installed || install_chroot
    if [ -n "${GODOT:-}" ]; then version=$("$GODOT" --version); else version=$(chroot "$ROOT" godot --version); fi
    echo "Godot $version ready; run it with: bash $SELF run PROJECT [GODOT ARGS...]"
    ;;
  run) shift; run_godot "$@" ;;
  -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' ;;
  *) die "unknown command $1 (expected install or run; see --help)" ;;
esac
