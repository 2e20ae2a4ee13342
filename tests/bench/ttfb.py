#!/usr/bin/env python3
"""Time to first byte of a file: open + read the first 64 KiB, timed inside the process.

Prints the seconds. Interpreter start-up is not counted, as curl's `%{time_total}` does not count
its own start-up: both figures are the I/O alone.
"""
import os
import sys
import time

want = 64 * 1024
t0 = time.perf_counter()
fd = os.open(sys.argv[1], os.O_RDONLY)
got = 0
while got < want:
    b = os.read(fd, want - got)
    if not b:
        break
    got += len(b)
t1 = time.perf_counter()
os.close(fd)
if got < min(want, os.stat(sys.argv[1]).st_size):
    sys.exit(f"ttfb: short read of {sys.argv[1]}: {got} bytes")
print(f"{t1 - t0:.6f}")
