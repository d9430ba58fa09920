"""The pickup benchmark's baseline: a worker that polls the database every 100 ms.

This is how Solid Queue's dispatcher finds work (polling_interval 0.1 s). It
claims the oldest Pending execution, marks it Running, and finishes it at
once: it has no backup to run, so only its pickup is comparable.

    python bench/polling_worker.py DATABASE_PATH
"""
import sqlite3
import sys
import time

POLL_SECONDS = 0.1


def now_ms():
    return int(time.time() * 1000)


def main(path):
    db = sqlite3.connect(path, timeout=10, isolation_level=None)
    db.execute("PRAGMA journal_mode=wal")
    while True:
        pending = db.execute("SELECT 1 FROM execution WHERE status = 'Pending' LIMIT 1").fetchone()
        if pending is None:
            time.sleep(POLL_SECONDS)
            continue
        db.execute("BEGIN IMMEDIATE")
        claimed = db.execute(
            "UPDATE execution SET status = 'Running', stage = 'Running', started_at = ? "
            "WHERE id IN (SELECT id FROM execution WHERE status = 'Pending' ORDER BY created_at LIMIT 1) "
            "RETURNING id", (now_ms(),)).fetchall()
        db.execute("COMMIT")
        for (execution_id,) in claimed:
            db.execute("UPDATE execution SET status = 'Success', stage = 'Completed', progress = 100, "
                       "ended_at = ? WHERE id = ?", (now_ms(), execution_id))


if __name__ == "__main__":
    main(sys.argv[1])
