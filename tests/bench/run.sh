#!/usr/bin/env bash
# The benchmark (README "Benchmarks"): ringfs side by side with curl, rclone mount and
# httpdirfs, over one `ringfs-emulator` (release build) per scenario.
#
#   tests/bench/run.sh                 # as root: the full run (about 4 minutes on 2 cores)
#   tests/bench/run.sh --quick         # fewer trials, smaller data sets
#   tests/bench/run.sh --only persist  # one scenario (emulator, wav, mp3, date, heavy, persist, scale)
#
# Installs what it needs (fuse3, curl, Debian's rclone and httpdirfs; hyperfine is not needed),
# builds the release binaries, then runs tests/bench/bench.py, which prints every figure with the
# command that produced it and writes the table to target/bench/results.md.
#
# Root is needed (FUSE mounts, apt-get). Everything is mounted under one temporary directory; the
# EXIT trap unmounts whatever is still mounted there and kills the processes bench.py started, so
# no mount is left behind even when the run fails or is interrupted. Not part of .ci/run.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ "$(id -u)" != 0 ]; then
  echo "bench: run as root (FUSE mounts and apt-get need it)" >&2
  exit 1
fi
[ -e /dev/fuse ] || { echo "bench: /dev/fuse is missing" >&2; exit 1; }

packages=(fuse3 curl rclone httpdirfs python3)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bench: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

cargo build --release --locked --bins

work=$(mktemp -d /tmp/ringfs-bench.XXXXXX)
cleanup() {
  status=$?
  # Mounts of this run only (all of them live under $work), deepest first.
  { grep -F " $work/" /proc/mounts || true; } | awk '{print $2}' | sort -r | while read -r m; do
    echo "bench: unmounting leftover $m" >&2
    umount -l "$m" 2>/dev/null || true
  done
  # Processes bench.py started and recorded (one pid a line), if any survived it.
  if [ -f "$work/pids" ]; then
    while read -r pid; do
      kill "$pid" 2>/dev/null || true
    done <"$work/pids"
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

python3 -u tests/bench/bench.py --work "$work" "$@"
