"""Backup speed and memory: backhook's SQLite and directory backups vs the plain pipelines.

Sources, generated once under var/bench/ and reused (--size-mb each):

- a SQLite database of documents: compressible text and random blobs;
- a directory tree of mixed files: text (logs, CSV-like) and random bytes.

backhook runs the real path: `backhook serve` and `backhook worker`, a job per
source with zstd compression, triggered with `POST /api/jobs/<id>/run`; the
time is trigger -> Success as the client sees it (it includes pickup,
fsync and the verifying re-read; no --keep, so no retention). The baselines are the plain
command lines, on the same sources, in the same run, alternating:

    sqlite3 SRC ".backup TMP" && zstd -q TMP -o OUT
    tar -cf - -C PARENT DIR | zstd -q -o OUT

While backhook runs, the RSS of the worker and all its children is sampled
every 20 ms from /proc; the worker's own peak is its VmHWM.

Targets (README.md, "Performance targets"): throughput >= 0.8x the plain pipeline; peak RSS < 150 MB.

    .venv/bin/python bench/backup_speed.py [--size-mb 1024] [--rounds 3] [--only files] [--quick]
"""
import argparse
import os
import random
import resource
import sqlite3
import subprocess
import threading
import time

import requests

import common

TARGET_RATIO, TARGET_RSS_MB = 0.8, 150
WORDS = ("backup restore worker stage verify the of and to in is for on with database archive stream "
         "compress checksum retention lease claim pending running success failed website plugin "
         "2026-11-22 INFO WARN GET POST 200 404 /api/jobs /var/lib/mysql user_id order_total").split()


# --- sources ---------------------------------------------------------------------------

def paragraphs(rng, count=512):
    """A pool of ~4 KB pieces of word salad with numbers: compresses about like logs and CSV."""
    return [" ".join(rng.choice(WORDS) if rng.random() < 0.8 else str(rng.randrange(10**6))
                     for _ in range(600)).encode() for _ in range(count)]


def make_sqlite(path, size_mb, rng):
    pool = paragraphs(rng)
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE document (id INTEGER PRIMARY KEY, title TEXT, body TEXT, attachment BLOB)")
    target, written = size_mb * 1024 * 1024, 0
    while written < target:
        rows = [(f"document {rng.randrange(10**9)}", rng.choice(pool).decode(), os.urandom(rng.choice((0, 1024, 2048))))
                for _ in range(500)]
        db.executemany("INSERT INTO document (title, body, attachment) VALUES (?, ?, ?)", rows)
        db.commit()
        written = path.stat().st_size
    db.close()


def make_files(root, size_mb, rng):
    pool = paragraphs(rng)
    target, written, number = size_mb * 1024 * 1024, 0, 0
    while written < target:
        folder = root / f"dir{number % 37:02d}" / f"sub{number % 5}"
        folder.mkdir(parents=True, exist_ok=True)
        size = min(int(rng.lognormvariate(11, 1.6)), 16 * 1024 * 1024, target - written) or 1
        if rng.random() < 0.5:
            name, data = f"file{number}.log", b"\n".join(rng.choice(pool) for _ in range(size // 4096 + 1))[:size]
        else:
            name, data = f"file{number}.bin", os.urandom(size)
        (folder / name).write_bytes(data)
        written += size
        number += 1


def sources(size_mb):
    """(sqlite path, directory path), generated on first use; a marker says they are complete."""
    base = common.WORK / f"backup-src-{size_mb}mb"
    marker = base / ".complete"
    if not marker.exists():
        print(f"generating {size_mb} MB sources in {base} (reused later) …", flush=True)
        base.mkdir(parents=True, exist_ok=True)
        for leftover in base.iterdir():
            subprocess.run(["rm", "-rf", str(leftover)], check=True)
        rng = random.Random(6)
        make_sqlite(base / "source.db", size_mb, rng)
        make_files(base / "files", size_mb, rng)
        marker.touch()
    return base / "source.db", base / "files"


def size_of(path):
    if path.is_file():
        return path.stat().st_size
    return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file())


def warm(path):
    """Read the source right before each run, so that every contender finds it in the page cache.

    This machine pages out file pages unused for about 30 s (DAMON reclaim),
    so a warm-up at the start would favour whichever contender runs second.
    """
    subprocess.run(f"tar -cf - -C {path.parent} {path.name} > /dev/null", shell=True, check=True)


# --- contenders ------------------------------------------------------------------------

def plain(kind, source, out_dir):
    """Run the plain pipeline; return (seconds, compressed bytes)."""
    out = out_dir / f"plain-{kind}.zst"
    if kind == "sqlite":
        tmp = out_dir / "plain-snapshot.db"
        command = f'sqlite3 "{source}" ".backup \'{tmp}\'" && zstd -q -f "{tmp}" -o "{out}"; rm -f "{tmp}"'
    else:
        command = f'tar -cf - -C "{source.parent}" "{source.name}" | zstd -q -f -o "{out}"'
    cpu_before, started = children_cpu(), time.monotonic()
    subprocess.run(["bash", "-o", "pipefail", "-c", command], check=True)
    seconds, cpu = time.monotonic() - started, children_cpu() - cpu_before
    size = out.stat().st_size
    out.unlink()
    return seconds, size, cpu, command


def children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class RssSampler(threading.Thread):
    """Peak of the summed VmRSS of a process and its descendants, sampled every 20 ms."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.peak_mb, self.running = pid, 0.0, True

    def run(self):
        while self.running:
            total = sum(common.rss_mb(pid) for pid in common.descendants(self.pid))
            self.peak_mb = max(self.peak_mb, total)
            time.sleep(0.02)

    def stop(self):
        self.running = False
        self.join()
        return self.peak_mb


class Backhook:
    """gunicorn + worker on one database, with one job per source."""

    def __init__(self, data_dir, sqlite_source, files_source):
        common.init_database(data_dir)
        # No retention (--keep): the plain pipelines delete no older backups either.
        # The bench removes each artifact itself, untimed.
        self.destination = data_dir / "backups"
        self.jobs = {
            "sqlite": common.add_job(data_dir, "bench-sqlite", f"sqlite://{sqlite_source}", self.destination),
            "files": common.add_job(data_dir, "bench-files", f"files://{files_source}", self.destination),
        }
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {common.api_key(data_dir)}"
        self.env = common.backhook_env(data_dir)
        self.db = common.connect(data_dir)
        self.last_stages = {}

    def backup(self, kind, web, worker):
        """Trigger and wait; return (seconds, compressed bytes, peak tree RSS MB, worker CPU seconds)."""
        sampler = RssSampler(worker.pid)
        sampler.start()
        cpu_before = common.cpu_seconds(worker.pid, reaped_children=True)  # tar is the worker's child
        seconds, status, size, error, execution_id = common.trigger_and_wait(self.http, web.url, self.jobs[kind],
                                                                             self.db)
        peak = sampler.stop()
        if status != "Success":
            raise RuntimeError(f"backhook {kind} backup ended {status}: {error}")
        self.last_stages[kind] = self.stage_ends(execution_id)
        for artifact in self.destination.rglob("*.zst"):
            artifact.unlink()
        return seconds, size, peak, common.cpu_seconds(worker.pid, reaped_children=True) - cpu_before

    def stage_ends(self, execution_id):
        """When each stage ended, in s after the start: its last log line, from the execution's logs."""
        rows = self.db.execute(
            "SELECT l.stage, max(l.timestamp) - e.started_at FROM execution_log l JOIN execution e "
            "ON e.id = l.execution_id WHERE e.id = ? GROUP BY l.stage ORDER BY 2", (execution_id,))
        return ", ".join(f"{stage} {ms / 1000:.2f} s" for stage, ms in rows)


def main(argv=()):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.size_arguments(parser, "each source")
    parser.add_argument("--only", choices=("sqlite", "files"), help="measure one source kind (shorter runs)")
    args = parser.parse_args(argv)
    common.require_tool("sqlite3")
    common.require_tool("zstd")

    sqlite_source, files_source = sources(args.size_mb)
    source_of = {kind: path for kind, path in (("sqlite", sqlite_source), ("files", files_source))
                 if args.only in (None, kind)}
    data_dir = common.fresh_dir("backup")
    runs = {(who, kind): [] for who in ("plain", "backhook") for kind in source_of}
    commands = {}
    backhook = Backhook(data_dir, sqlite_source, files_source)
    web = common.serve(backhook.env)
    worker = common.worker(backhook.env)
    try:
        for round_number in range(args.rounds):
            for kind, source in source_of.items():
                warm(source)
                seconds, size, cpu, commands[kind] = plain(kind, source, data_dir)
                runs["plain", kind].append((seconds, size, None, cpu))
                warm(source)
                runs["backhook", kind].append(backhook.backup(kind, web, worker))
                for who in ("plain", "backhook"):
                    seconds, size, _, cpu = runs[who, kind][-1]
                    print(f"round {round_number + 1} {kind:6} {who:8} {seconds:6.2f} s "
                          f"{size_of(source) / seconds / 1e6:7.1f} MB/s  → {size / 1e6:.1f} MB  "
                          f"CPU {cpu:.2f} s", flush=True)
        worker_hwm = common.rss_mb(worker.pid, "VmHWM")
    finally:
        for process in (worker, web):
            process.stop()
    stages = backhook.last_stages
    section = report(runs, {kind: size_of(path) for kind, path in source_of.items()}, commands, worker_hwm,
                     stages, args)
    print(section)
    return section


def report(runs, sizes, commands, worker_hwm, stages, args):
    rows, all_met, peak = [], True, 0.0
    for kind in sizes:
        plain_s = common.median([run[0] for run in runs["plain", kind]])
        plain_size = runs["plain", kind][0][1]
        plain_cpu = common.median([run[3] for run in runs["plain", kind]])
        row = [kind, f"{sizes[kind] / 1e6:.0f}", f"{sizes[kind] / plain_s / 1e6:.1f}", f"{plain_size / 1e6:.1f}",
               f"{plain_cpu:.1f}"]
        own_s = common.median([run[0] for run in runs["backhook", kind]])
        own_size = runs["backhook", kind][0][1]
        own_cpu = common.median([run[3] for run in runs["backhook", kind]])
        ratio = plain_s / own_s
        peak = max([peak] + [run[2] for run in runs["backhook", kind]])
        all_met &= ratio >= TARGET_RATIO
        row += [f"{sizes[kind] / own_s / 1e6:.1f}", f"{own_size / 1e6:.1f}", f"{own_cpu:.1f}",
                f"**{ratio:.2f}×**", common.verdict(ratio >= TARGET_RATIO)]
        rows.append(row)
    lines = [
        "## Backup speed and memory",
        "",
        f"Sources of {args.size_mb} MB each under var/bench/, read into the page cache before each run, {args.rounds} alternating rounds, "
        f"medians. backhook: trigger → Success through `backhook serve` and `backhook worker`, zstd.",
        "",
        common.table(["source", "MB", "plain MB/s", "plain zst MB", "plain CPU s", "backhook MB/s",
                      "backhook zst MB", "backhook CPU s", "ratio", f"≥ {TARGET_RATIO}×"], rows),
        "",
        "MB/s is source bytes over wall time (the ratio is plain time / backhook time); CPU s is user+system "
        "time of the pipeline's processes, or of the worker and its tar child.",
        "",
        *(f"- Plain {kind}: `{command}`" for kind, command in commands.items()),
    ]
    rss_met = max(peak, worker_hwm) < TARGET_RSS_MB
    return "\n".join(lines + [
        *(f"- backhook {kind}, last round, end of each stage (from its logs): {ends}" for kind, ends in stages.items()),
        f"- Peak RSS of the worker's process tree (sampled every 20 ms): **{peak:.0f} MB**; "
        f"the worker's own VmHWM: **{worker_hwm:.0f} MB** (target < {TARGET_RSS_MB} MB): {common.verdict(rss_met)}",
        f"- Verdict: {common.verdict(all_met and rss_met)}",
    ])


if __name__ == "__main__":
    common.run_standalone(main)
