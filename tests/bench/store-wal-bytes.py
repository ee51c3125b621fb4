#!/usr/bin/env python3
"""What one issuance group writes to the SQLite store's write-ahead log (issue 18).

Commits groups of ROWS lease rows plus the chain head's update (what the audit recorder's
transaction does) into a COPY of a database the broker created, with `synchronous = NORMAL`
and no checkpoint in between, and prints the log's bytes per group and how many pages that is.
With --page-size N the copy is first rebuilt with N-byte pages (`VACUUM`).

    touch empty.log
    lanyard-broker audit verify empty.log --store new.db     # the broker creates its database
    python3 tests/bench/store-wal-bytes.py new.db [ROWS] [--page-size 4096]

The database given is not changed.
"""
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import time

args = sys.argv[1:]
page_size = None
if "--page-size" in args:
    i = args.index("--page-size")
    try:
        page_size = int(args[i + 1])
    except (IndexError, ValueError):
        sys.exit("--page-size takes a number of bytes, such as 4096")
    del args[i : i + 2]
if not args or args[0].startswith("--"):
    sys.exit("usage: store-wal-bytes.py DATABASE [ROWS] [--page-size N] (see the top of this file)")
rows = int(args[1]) if len(args) > 1 else 3

with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "copy.db")
    src = sqlite3.connect(f"file:{args[0]}?mode=ro", uri=True)
    dst = sqlite3.connect(path)
    src.backup(dst)
    src.close()
    dst.close()
    db = sqlite3.connect(path, isolation_level=None)
    if page_size:
        db.execute("PRAGMA journal_mode = DELETE")
        db.execute(f"PRAGMA page_size = {page_size}")
        db.execute("VACUUM")
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute("PRAGMA wal_autocheckpoint = 0")
    size = db.execute("PRAGMA page_size").fetchone()[0]
    db.execute("INSERT OR REPLACE INTO audit_head (id, seq, hash) VALUES (1, 0, '')")

    def group(seq):
        db.execute("BEGIN IMMEDIATE")
        for _ in range(rows):
            ms = int(time.time() * 1000)
            row = {
                "lease_id": f"ls_{ms:012x}{random.getrandbits(64):016x}",
                "role": "app",
                "backend": "jwt",
                "subject": "system:serviceaccount:shop:api",
                "issuer": "https://issuer.example",
                "issued_at": ms // 1000,
                "expires_at": ms // 1000 + 900,
                "fingerprint": "f" * 64,
                "pod_uid": "67eb1bee-815b-44ba-a865-aaa1b38fdc6e",
            }
            db.execute(
                f"INSERT INTO leases ({','.join(row)}) VALUES ({','.join('?' * len(row))})",
                list(row.values()),
            )
        db.execute("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", (seq, "h" * 64))
        db.execute("COMMIT")

    for seq in range(700):  # a table some pages deep first
        group(seq)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    wal = path + "-wal"
    before = os.path.getsize(wal) if os.path.exists(wal) else 0
    n = 1000
    for seq in range(n):
        group(700 + seq)
    per = (os.path.getsize(wal) - before) / n
    db.close()
print(
    f"{size}-byte pages: {per:,.0f} bytes of write-ahead log per group of {rows} lease rows "
    f"and the chain head ({per / (size + 24):.1f} pages)"
)
