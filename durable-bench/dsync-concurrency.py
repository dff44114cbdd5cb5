#!/usr/bin/env python3
"""Durable writes per second as one, two and four threads each issue 4 KiB
`O_DIRECT | O_DSYNC` overwrites of a preallocated, zero-filled file (as the host log's
rounds are written), each thread in a region of its own, for 3 s per setting, twice.
Whether the disk completes concurrent durable writes side by side: the lead for
keeping two log rounds in flight (BENCHMARKS.md, session 34).
    durable-bench/dsync-concurrency.py [DIR=/tmp]
"""
import mmap
import os
import sys
import threading
import time

path = os.path.join(sys.argv[1] if len(sys.argv) > 1 else "/tmp", "dsync-probe")
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
os.ftruncate(fd, 0)
zeros = b"\0" * (1 << 20)
for i in range(256):
    os.pwrite(fd, zeros, i << 20)
os.fsync(fd)
os.close(fd)


def run(threads, secs=3.0):
    fds = [os.open(path, os.O_RDWR | os.O_DIRECT | os.O_DSYNC) for _ in range(threads)]
    buf = mmap.mmap(-1, 4096)  # page-aligned, as O_DIRECT wants
    buf.write(b"x" * 4096)
    counts = [0] * threads
    stop = time.time() + secs

    def write(i):
        base, n = i * (64 << 20), 0
        while time.time() < stop:
            os.pwrite(fds[i], buf, base + (n % 10000) * 4096)
            n += 1
        counts[i] = n

    ts = [threading.Thread(target=write, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for f in fds:
        os.close(f)
    return sum(counts) / secs


try:
    for t in [1, 2, 4, 1, 2, 4]:
        print(f"{t} thread(s): {run(t):8.0f} durable writes/s")
finally:
    os.unlink(path)
