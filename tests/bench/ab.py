#!/usr/bin/env python3
"""A/B of two ringfs binaries on the benchmark's scenarios, interleaved trial by trial.

    sudo python3 tests/bench/ab.py --work "$(mktemp -d)" A=target/ab/ringfs-before B=target/release/ringfs

Each trial runs every binary once, in turn, so a busy or drifting machine weighs on both alike:
- a cold `cat` of the emulator's longest WAV (a fresh mount per trial, `--format wav`);
- the time to first byte of 30 recordings never read before, by any binary (`tests/bench/ttfb.py`);
- three warm `find`s of a 5000-call account's dates (after one untimed `find`).

Prints the median of each figure per binary, with its trials and the command. Uses the helpers
of `bench.py` (the same emulator, mount options and clean-up); root for the mounts. Build the
"before" binary from the other commit first, e.g.
`git worktree add /tmp/before HEAD~1 && cargo build --release --manifest-path /tmp/before/Cargo.toml`.
"""
import argparse
import atexit
import datetime
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402


def cold_wav(emu, longest):
    m = bench.mount_ringfs(emu, ["--format", "wav"])
    bench.index_ringfs(m)
    path = m.paths[longest["id"]]
    secs = bench.run_timed(["cat", path], f"cat {path} > /dev/null")
    m.unmount()
    return longest["size"] / secs / 1e6


def ttfb(emu, pool):
    m = bench.mount_ringfs(emu)
    bench.index_ringfs(m)
    times = []
    for f in pool:
        out = subprocess.run(["python3", bench.TTFB, m.paths[f["id"]]], capture_output=True, text=True, check=True)
        times.append(float(out.stdout) * 1000)
    m.unmount()
    return statistics.median(times)


def warm_find(emu):
    m = bench.mount_ringfs(emu)
    cmd = ["find", m.path, "-path", f"{m.path}/by-session", "-prune", "-o",
           "-path", f"{m.path}/by-recording", "-prune", "-o", "-print"]
    bench.run_timed(cmd, "find (untimed, lists every date)")
    secs = sum(bench.run_timed(cmd, " ".join(cmd)) for _ in range(3))
    m.unmount()
    return secs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, help="scratch directory (mounts live under it)")
    ap.add_argument("--trials", type=int, default=7)
    ap.add_argument("binaries", nargs="+", help="NAME=PATH of each ringfs binary")
    args = ap.parse_args()
    bins = dict(b.split("=", 1) for b in args.binaries)
    bench.JANITOR = bench.Janitor(os.path.abspath(args.work))
    atexit.register(bench.JANITOR.cleanup)

    wav = bench.Emulator("ab-wav", ["--format", "wav", "--calls", "300", "--unlimited",
                                    "--record-delay", "0", "--recording-delay", "0"])
    mp3 = bench.Emulator("ab-mp3", ["--format", "mp3", "--calls", "5000", "--days", "90", "--unlimited",
                                    "--record-delay", "0", "--recording-delay", "0"])
    longest = max(wav.files(), key=lambda f: f["size"])
    # Recordings of 1 to 6 minutes inside ringfs's default window (90 dates ending today, UTC).
    first_date = (datetime.datetime.now(datetime.timezone.utc).date() - datetime.timedelta(days=89)).isoformat()
    typical = [f for f in mp3.files() if 60 * 4000 <= f["size"] <= 360 * 4000 and f["start"][:10] >= first_date]
    results = {name: {"cold WAV MB/s": [], "first byte ms": [], "3 warm finds s": []} for name in bins}
    if len(typical) < 30 * len(bins) * args.trials:
        sys.exit(f"only {len(typical)} typical recordings for {args.trials} trials")
    for t in range(args.trials):
        for i, (name, path) in enumerate(bins.items()):
            # Recordings no binary read before: the emulator renders a recording on its first
            # request, so a shared pool would favour whoever reads it second.
            k = t * len(bins) + i
            pool = typical[k * 30:(k + 1) * 30]
            bench.RINGFS = os.path.abspath(path)
            r = results[name]
            r["cold WAV MB/s"].append(cold_wav(wav, longest))
            r["first byte ms"].append(ttfb(mp3, pool))
            r["3 warm finds s"].append(warm_find(mp3))
        print(f"trial {t + 1}/{args.trials} done", flush=True)
    print(f"\n{args.trials} interleaved trials; emulators: {wav.command} / {mp3.command}")
    print(f"commands: cat <longest WAV, {longest['size']} bytes> (fresh mount); python3 tests/bench/ttfb.py "
          "<30 recordings of 1-6 min> (median per trial); find MOUNT -path MOUNT/by-session -prune -o "
          "-path MOUNT/by-recording -prune -o -print, 3 times")
    for fig in next(iter(results.values())):
        for name in bins:
            xs = results[name][fig]
            print(f"  {fig:16s} {name:8s} median {statistics.median(xs):8.2f}   "
                  f"[{' '.join(f'{x:.2f}' for x in xs)}]")


if __name__ == "__main__":
    main()
