"""Webhook latency with an empty database against one holding 100,000 websites and their backups.

    .venv/bin/python bench/webhook_scale.py [--websites 100000] [--backups-per-site 10] [--requests 2000]

One client, sequential requests to gunicorn; prints the median and p99 of
each and the ratio of the medians. Target: within 1.3x of the empty database.
"""
import argparse
import sqlite3
import statistics
import tempfile
import time

import requests

from webhooks import TOKEN, prepare, serve


def populate(db_path, websites, backups_per_site):
    now = int(time.time() * 1000)
    with sqlite3.connect(db_path) as db:
        db.executemany("INSERT INTO website (id, domain, created_at) VALUES (?, ?, ?)",
                       ((f"w{n:012d}", f"site{n}.example", now) for n in range(websites)))
        db.executemany("INSERT INTO backup (id, website_id, backup_id, status, progress, created_at, updated_at) "
                       "VALUES (?, ?, ?, 'completed', 100, ?, ?)",
                       ((f"b{n:08d}-{k}", f"w{n:012d}", f"old-{k}", now, now)
                        for n in range(websites) for k in range(backups_per_site)))
        db.executemany("INSERT INTO backup_event (backup_pk, kind, payload, received_at) VALUES (?, 'complete', '{}', ?)",
                       ((f"b{n:08d}-{k}", now) for n in range(websites) for k in range(backups_per_site)))


def latencies(url, count, domain):
    session = requests.Session()
    times = []
    for number in range(count):
        body = {"domain": domain, "backup_id": f"scale-{number % 200}", "progress": number % 101}
        started = time.perf_counter()
        response = session.post(url + "/webhooks/backup-progress", json=body, headers={"x-wpfort-token": TOKEN})
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.text
    return statistics.median(times), statistics.quantiles(times, n=100)[98]


def measure(websites, backups_per_site, count):
    with tempfile.TemporaryDirectory() as data_dir:
        env = prepare(data_dir, lambda db_path: populate(db_path, websites, backups_per_site))
        proc, url = serve("app:create_app()", 1, env, "/livez")
        try:
            latencies(url, 200, "bench.example")  # warm up
            return latencies(url, count, "bench.example")
        finally:
            proc.terminate()
            proc.wait()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--websites", type=int, default=100_000)
    parser.add_argument("--backups-per-site", type=int, default=10)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    empty = measure(0, 0, args.requests)
    full = measure(args.websites, args.backups_per_site, args.requests)
    print(f"empty    median {empty[0]:.2f} ms  p99 {empty[1]:.2f} ms")
    print(f"{args.websites:,} sites, {args.websites * args.backups_per_site:,} backups: "
          f"median {full[0]:.2f} ms  p99 {full[1]:.2f} ms")
    ratio = full[0] / empty[0]
    print(f"ratio    {ratio:.2f}x (target <= 1.30x): {'PASS' if ratio <= 1.3 else 'FAIL'}")


if __name__ == "__main__":
    main()
