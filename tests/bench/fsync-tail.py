#!/usr/bin/env python3
"""The disk's own tail under the audit log's pattern (issue 18).

Appends a group of audit-sized lines and `fdatasync`s it, RATE times a second for SECONDS
(defaults 2000 and 60: about the groups per second the audit writer makes at half of peak
issuance), in a file in DIR (default: a fresh directory under the current one), and prints the
sync latency's p50 / p99 / p99.9 / max and how many syncs took over 5 ms. A durable answer waits
at least one such sync, so issuance's tail at a fixed rate cannot be shorter than this one on the
same disk.

    python3 tests/bench/fsync-tail.py [RATE] [SECONDS] [DIR] [--sqlite] [--overwrite]

--sqlite     a second process writes like the broker's SQLite store at half load meanwhile:
             rows of a table shaped like its `leases` (without the pod index; no chain-head
             row), four per transaction, 7,344 a second, into a WAL database with
             `synchronous = NORMAL`, checkpointed by a thread of its own every CKPT seconds
             (environment, default 0.1, as the broker does), with pages of PAGE bytes
             (environment, default 1024, as the broker creates them; SQLite's own is 4096).
--overwrite  the audit file is written with zeros first and then overwritten in place (a
             pre-allocated segment: the sync needs no metadata change) instead of appended to.
"""
import multiprocessing
import os
import random
import sqlite3
import sys
import tempfile
import threading
import time

flags = {a for a in sys.argv[1:] if a.startswith("--")}
args = [a for a in sys.argv[1:] if not a.startswith("--")]
unknown = flags - {"--sqlite", "--overwrite"}
if unknown:
    sys.exit(f"unknown option {sorted(unknown)[0]}; see the docstring at the top of this file")
rate = int(args[0]) if len(args) > 0 else 2000
seconds = int(args[1]) if len(args) > 1 else 60
where = args[2] if len(args) > 2 else "."
checkpoint_every = float(os.environ.get("CKPT", "0.1"))
page_size = int(os.environ.get("PAGE", "1024"))
group = b'{"seq":1,"prev":"' + b"0" * 64 + b'","event":"issue"' + b"x" * 700 + b"}\n"
group *= 4  # about four records per group, as the audit writer makes them at half load


def store_load(path, until):
    """Lease-like rows, written the way the broker's SQLite store writes them, until `until`."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(f"PRAGMA page_size = {page_size}")
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute("PRAGMA wal_autocheckpoint = 16384")
    db.execute(
        "CREATE TABLE leases (lease_id TEXT PRIMARY KEY NOT NULL, role TEXT, backend TEXT,"
        " subject TEXT, issuer TEXT, issued_at INTEGER, expires_at INTEGER, upstream_lease"
        " TEXT, fingerprint TEXT, revoked_at INTEGER, renew_step_secs INTEGER, pod_uid TEXT)"
    )
    db.execute("CREATE INDEX leases_expires_at ON leases (expires_at)")

    def checkpointer():
        own = sqlite3.connect(path, isolation_level=None)
        while time.time() < until:
            time.sleep(checkpoint_every)
            own.execute("PRAGMA wal_checkpoint(PASSIVE)")

    threading.Thread(target=checkpointer, daemon=True).start()
    period, start, n = 4 / 7344, time.perf_counter(), 0
    while time.time() < until:
        due = start + n * period
        now = time.perf_counter()
        if due > now:
            time.sleep(due - now)
        db.execute("BEGIN IMMEDIATE")
        for _ in range(4):
            ms = int(time.time() * 1000)
            db.execute(
                "INSERT INTO leases VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (f"ls_{ms:012x}{random.getrandbits(64):016x}", "app", "jwt",
                 "system:serviceaccount:shop:api", "https://issuer", ms // 1000,
                 ms // 1000 + 900, None, "f" * 64, None, None, None),
            )
        db.execute("COMMIT")
        n += 1


with tempfile.TemporaryDirectory(dir=where) as d:
    load = None
    if "--sqlite" in flags:
        load = multiprocessing.Process(
            target=store_load, args=(os.path.join(d, "store.db"), time.time() + seconds + 2)
        )
        load.start()
        time.sleep(1)
    path = os.path.join(d, "audit.log")
    if "--overwrite" in flags:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        zeros = b"\0" * (1 << 20)
        for _ in range(len(group) * rate * (seconds + 5) // len(zeros) + 1):
            os.write(fd, zeros)
        os.fsync(fd)
        os.lseek(fd, 0, os.SEEK_SET)
    else:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
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
    if load:
        load.join()

lat.sort()
q = lambda p: 1e3 * lat[min(len(lat) - 1, int(p * len(lat)))]
how = "overwritten in place" if "--overwrite" in flags else "appended"
beside = (
    f", SQLite lease rows beside it ({page_size}-byte pages, checkpoint every {checkpoint_every:g} s)"
    if load
    else ""
)
print(
    f"fdatasync of {len(group)} bytes {how}{beside}, {len(lat)} groups at up to {rate}/s: "
    f"p50 {q(0.5):.3f} ms, p99 {q(0.99):.3f} ms, p99.9 {q(0.999):.3f} ms, "
    f"max {1e3 * lat[-1]:.3f} ms, over 5 ms: {sum(1 for x in lat if x > 0.005)}"
)
