#!/usr/bin/env python3
"""The disk's own tail under the audit log's pattern (issue 18).

Appends a group of audit-sized lines and `fdatasync`s it, RATE times a second for SECONDS
(defaults 2000 and 60: about the groups per second the audit writer makes at half of peak
issuance), in a file in DIR (default: a fresh directory under the current one), and prints the
sync latency's p50 / p99 / p99.9 / max. A durable answer waits at least one such sync, so
issuance's tail at a fixed rate cannot be shorter than this one on the same disk.

    python3 tests/bench/fsync-tail.py [RATE] [SECONDS] [DIR]
"""
import os
import sys
import tempfile
import time

rate = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
seconds = int(sys.argv[2]) if len(sys.argv) > 2 else 60
where = sys.argv[3] if len(sys.argv) > 3 else "."
group = b'{"seq":1,"prev":"' + b"0" * 64 + b'","event":"issue"' + b"x" * 700 + b"}\n"
group *= 4  # about four records per group, as the audit writer makes them at half load

with tempfile.TemporaryDirectory(dir=where) as d:
    fd = os.open(os.path.join(d, "audit.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    lat = []
    period = 1.0 / rate
    start = time.perf_counter()
    n = 0
    while True:
        due = start + n * period
        now = time.perf_counter()
        if now - start >= seconds:
            break
        if due > now:
            time.sleep(due - now)
        t = time.perf_counter()
        os.write(fd, group)
        os.fdatasync(fd)
        lat.append(time.perf_counter() - t)
        n += 1
    os.close(fd)

lat.sort()
q = lambda p: 1e3 * lat[min(len(lat) - 1, int(p * len(lat)))]
print(
    f"fdatasync of {len(group)} bytes, {len(lat)} groups at up to {rate}/s: "
    f"p50 {q(0.5):.3f} ms, p99 {q(0.99):.3f} ms, p99.9 {q(0.999):.3f} ms, max {1e3 * lat[-1]:.3f} ms"
)
