"""Scale: hot-path latency with 1,000,000 executions and 100,000 websites vs an empty database.

Two databases with the same 1,000 jobs:

- "empty": only what the requests need: a history page (20 executions,
  shaped as the full database's successes, with their log lines) per job,
  50 websites with 5 backups each;
- "full": 1,000,000 finished executions spread over the 1,000 jobs, each with
  5 log lines, one success in a hundred proven restorable by a drill;
  100,000 websites with 5 backups each and 3 events per backup.

The full database is filled with bulk INSERT ... SELECT over recursive CTEs
and cached under var/bench/ (keyed by schema.sql and the sizes); each run
works on a copy of it. Median latencies, each from one connection (wrk -c 1)
in alternating rounds, both databases served by the same gunicorn settings:

- GET /api/executions/<id> (random ids), also with ?includeLogs=true
- POST /webhooks/backup-progress (random existing sites and backups)
- GET /api/jobs
- GET /api/executions, the history: pages of 20, unfiltered, by job, by
  status, by both, by type, and from a random `before` anywhere in it
- GET /metrics, the whole scrape (every job's series)
- the dashboard's pages, signed in (a session cookie): jobs, history (the
  same shapes as the API's, pages of 20), an execution with its logs,
  websites, a website with its backups, API keys, settings
- the worker's claim: trigger over HTTP until `backhook worker` has claimed the execution

Target (README.md, "Performance targets"): each within 1.3x of the empty database.

    .venv/bin/python bench/scale.py [--executions 1000000] [--websites 100000] [--jobs 1000] [--only history,poll]
        [--quick]
"""
import argparse
import hashlib
import re
import shutil
import sqlite3
import time

import requests

import common

LOGS_PER_EXECUTION = 5
BACKUPS_PER_SITE = 5
EVENTS_PER_BACKUP = 3
TARGET_RATIO = 1.3
FILL_VERSION = 2  # bump when the fill below changes
FINISHED = ("Success", "Failed", "Cancelled")
HISTORY_PAGE = 20  # the listing's page size, and how many executions each job has in the empty database
PAGES = ["page:jobs", "page:history", "page:execution", "page:websites", "page:website", "page:keys",
         "page:settings"]
MEASURES = ["poll", "poll+logs", "jobs", "history", "webhook", "metrics", *PAGES, "claim"]


# --- filling ---------------------------------------------------------------------------

def create_database(data_dir, jobs, websites):
    """A migrated database with `jobs` jobs and `websites` sites."""
    common.init_database(data_dir)
    with common.transaction(data_dir) as db:
        db.executemany("INSERT INTO job (id, name, source, destination, keep, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                       [(common.new_id(), f"job-{number:04d}", f"files:///srv/site-{number}",
                         "/var/backups/backhook", 7, common.now_ms()) for number in range(jobs)])
    if websites:
        common.add_websites(data_dir, websites)


# Log lines, in execution order so the (execution_id, id) index grows at its end.
LOG_LINES_SQL = """WITH RECURSIVE k(j) AS (SELECT 1 UNION ALL SELECT j + 1 FROM k WHERE j < :logs)
    INSERT INTO execution_log (execution_id, timestamp, level, stage, message)
    SELECT e.id, e.started_at + k.j * 10000, 'info',
           CASE k.j WHEN 1 THEN 'Initializing' WHEN 2 THEN 'Dumping' WHEN 3 THEN 'Uploading'
                    WHEN 4 THEN 'Verifying' ELSE 'Applying Retention' END,
           'stage ' || k.j || ' done: ' || coalesce(e.size, 0) || ' bytes written so far'
    FROM execution e CROSS JOIN k ORDER BY e.rowid, k.j"""

FILL_SQL = [
    "CREATE TEMP TABLE bench_job AS SELECT row_number() OVER (ORDER BY id) - 1 AS k, id FROM job",
    # Executions: one every 30 s, finishing a minute later, ending a year of history now.
    """WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < :executions - 1),
       e AS (SELECT i, :start + i * 30000 AS t, i % 50 = 0 AS failed FROM n)
    INSERT INTO execution (id, job_id, type, status, progress, stage, created_at, started_at, ended_at,
                           size, path, sha256, error, attempts, worker_id, proven_restorable_at)
    SELECT printf('%012x', t) || lower(hex(randomblob(10))), j.id, 'Backup',
           iif(failed, 'Failed', 'Success'), iif(failed, 37, 100), iif(failed, 'Failed', 'Completed'),
           t, t + 150, t + 60000,
           iif(failed, NULL, 50000000 + abs(random() % 50000000)),
           iif(failed, NULL, '/var/backups/backhook/' || j.id || '/' || t || '.tar.zst'),
           iif(failed, NULL, lower(hex(randomblob(32)))),
           iif(failed, 'tar: /srv/site: Cannot open: Permission denied', NULL), 1, 'bench-host-1',
           iif(i % 100 = 1, t + 120000, NULL)
    FROM e JOIN bench_job j ON j.k = e.i % :jobs""",
    LOG_LINES_SQL,
    """WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < :websites - 1)
    INSERT INTO website (id, domain, wpsec_url, wpsec_api_key, created_at, synced_at, remote_backups)
    SELECT printf('%012x', :start + i) || lower(hex(randomblob(10))), 'site' || i || '.bench.test',
           'https://site' || i || '.bench.test', lower(hex(randomblob(16))), :start + i, :now, '[]'
    FROM n""",
    "CREATE TEMP TABLE bench_site AS SELECT CAST(substr(domain, 5) AS INTEGER) AS k, id FROM website",
    "CREATE UNIQUE INDEX temp.bench_site_k ON bench_site (k)",
    # Backup n (1..websites*5) of site n % websites, spelled as bench/wrk.lua spells it.
    """WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :websites * :backups),
       b AS (SELECT i, :start + i * 60000 AS t FROM n)
    INSERT INTO backup (id, website_id, backup_id, status, progress, created_at, updated_at, completed_at)
    SELECT printf('%012x', t) || lower(hex(randomblob(10))), s.id, 'bk-' || i, 'completed', 100,
           t, t + 600000, t + 600000
    FROM b JOIN bench_site s ON s.k = b.i % :websites""",
    """WITH RECURSIVE k(j) AS (SELECT 1 UNION ALL SELECT j + 1 FROM k WHERE j < :events)
    INSERT INTO backup_event (backup_pk, kind, payload, received_at)
    SELECT b.id, iif(k.j = :events, 'complete', 'progress'),
           '{"domain":"site.bench.test","backup_id":"' || b.backup_id || '","progress":' || (k.j * 30) || '}',
           b.created_at + k.j * 200000
    FROM backup b CROSS JOIN k ORDER BY b.rowid, k.j""",
]


# The counters /metrics reads (schema.sql version 10) hold what backhook would have counted while
# the history was written; a schema before them has nothing to fill.
TALLY_SQL = {
    "run_tally": "INSERT INTO run_tally (job_id, type, status, count) SELECT job_id, type, status, count(*) "
                 "FROM execution WHERE status IN ('Success', 'Failed', 'Cancelled') GROUP BY job_id, type, status",
    "backup_tally": "INSERT INTO backup_tally (status, count) SELECT status, count(*) FROM backup GROUP BY status",
}


def count_tallies(db):
    """Count the history into the tally tables this schema has, in the caller's transaction."""
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    for table, sql in TALLY_SQL.items():
        if table in tables:
            db.execute(f"DELETE FROM {table}")
            db.execute(sql)


def fill(path, executions, jobs, websites):
    """Bulk-insert the history into the migrated database at `path`."""
    params = {"executions": executions, "websites": websites, "jobs": jobs, "logs": LOGS_PER_EXECUTION,
              "backups": BACKUPS_PER_SITE, "events": EVENTS_PER_BACKUP,
              "now": common.now_ms(), "start": common.now_ms() - executions * 30000 - 86_400_000}
    db = sqlite3.connect(path, isolation_level=None)
    # Speed for a one-off bulk load; the app sets WAL and synchronous=normal again when it opens it.
    db.executescript("PRAGMA journal_mode=off; PRAGMA synchronous=off; PRAGMA cache_size=-1000000;")
    db.execute("BEGIN")
    for statement in FILL_SQL:
        started = time.monotonic()
        db.execute(statement, {name: value for name, value in params.items() if f":{name}" in statement})
        print(f"  {statement.split('INSERT INTO ')[-1].split()[0] if 'INSERT' in statement else 'temp':14}"
              f" {time.monotonic() - started:6.1f} s", flush=True)
    count_tallies(db)
    db.execute("COMMIT")
    db.execute("PRAGMA journal_mode=wal")
    db.close()


def full_database(data_dir, executions, jobs, websites):
    """A copy of the cached full database in `data_dir`; fills the cache first if needed."""
    schema = (common.PROJECT / "schema.sql").read_bytes()
    tag = hashlib.sha256(schema + f"{FILL_VERSION}-{executions}-{jobs}-{websites}".encode()).hexdigest()[:12]
    cache = common.WORK / f"scale-{executions}-{websites}-{tag}.db"
    if not cache.exists():
        for stale in common.WORK.glob(f"scale-{executions}-{websites}-*.db"):
            stale.unlink()  # a cache for an older schema
        print(f"filling {cache.name} (cached for later runs) …", flush=True)
        started = time.monotonic()
        scratch = common.fresh_dir("scale-fill")
        create_database(scratch, jobs, 0)
        fill(scratch / "backhook.db", executions, jobs, websites)
        (scratch / "backhook.db").rename(cache)
        print(f"filled in {time.monotonic() - started:.0f} s, {cache.stat().st_size / 1e9:.2f} GB", flush=True)
    shutil.copyfile(cache, data_dir / "backhook.db")
    common.init_database(data_dir)  # applies migrations newer than the cache, if any
    return common.api_key(data_dir)


# --- measuring -------------------------------------------------------------------------

class Side:
    """One database, served by gunicorn, with what the requests need."""

    def __init__(self, name, data_dir, key, sites, backup_ids):
        self.name, self.data_dir, self.key = name, data_dir, key
        self.sites, self.backup_ids = sites, backup_ids
        self.db = sqlite3.connect(data_dir / "backhook.db")
        ids = [row[0] for row in self.db.execute("SELECT id FROM execution ORDER BY random() LIMIT 2000")]
        self.ids = ids
        self.history_paths = self.history_pages()
        self.paths = {
            "poll": self.paths_file("poll", [f"/api/executions/{i}" for i in ids]),
            "poll+logs": self.paths_file("poll-logs", [f"/api/executions/{i}?includeLogs=true" for i in ids]),
            "jobs": self.paths_file("jobs", ["/api/jobs"]),
            "metrics": self.paths_file("metrics", ["/metrics"]),
            "history": self.paths_file("history", self.history_paths),
        }
        # The dashboard's history takes the API's arguments: pages of 20 here too, which the empty database fills.
        self.page_history_paths = self.history_pages("/history")
        self.paths.update({
            "page:jobs": self.paths_file("page-jobs", ["/jobs"]),
            "page:history": self.paths_file("page-history", self.page_history_paths),
            "page:execution": self.paths_file("page-execution", [f"/executions/{i}" for i in ids]),
            "page:websites": self.paths_file("page-websites", ["/websites"]),
            # the first 50 sites, which both databases have, with 5 backups each
            "page:website": self.paths_file("page-website", [f"/websites/{common.SITE_DOMAIN.format(k)}"
                                                             for k in range(50)]),
            "page:keys": self.paths_file("page-keys", ["/keys"]),
            "page:settings": self.paths_file("page-settings", ["/settings"]),
        })
        self.cookie = None

    def history_pages(self, prefix="/api/executions"):
        """Full pages of the history listing, in each of its shapes, from anywhere in it."""
        jobs = [row[0] for row in self.db.execute("SELECT id FROM job WHERE name LIKE 'job-%'")]
        # Cursors with a full page behind them: the newest page's ids are left out.
        cursors = [row[0] for row in self.db.execute(
            "SELECT id FROM (SELECT id FROM execution ORDER BY created_at, id LIMIT -1 OFFSET ?) "
            "ORDER BY random() LIMIT 500", (HISTORY_PAGE,))]
        page = f"{prefix}?limit={HISTORY_PAGE}"
        shapes = [lambda number: page, lambda number: f"{page}&jobId={jobs[number % len(jobs)]}",
                  lambda number: f"{page}&status=Success",
                  lambda number: f"{page}&jobId={jobs[number % len(jobs)]}&status=Success",
                  lambda number: f"{page}&type=Backup",
                  lambda number: f"{page}&before={cursors[number % len(cursors)]}"]
        return [shapes[number % len(shapes)](number) for number in range(3000)]

    def paths_file(self, name, paths):
        path = self.data_dir / f"paths-{name}.txt"
        path.write_text("\n".join(paths) + "\n")
        return path

    def warm(self, what):
        """Read the pages that the requests of `what` will need into the page cache.

        This machine pages out file pages that stay unused for about 30 s
        (DAMON reclaim), so without this the full database's random lookups
        would time this disk rather than the database; see RESULTS.md.
        """
        if what in ("poll", "poll+logs", "page:execution"):
            for execution_id in self.ids:
                self.db.execute("SELECT * FROM execution WHERE id = ?", (execution_id,)).fetchall()
                self.db.execute("SELECT * FROM execution_log WHERE execution_id = ? ORDER BY id",
                                (execution_id,)).fetchall()
        elif what == "webhook":  # random sites and backups: their whole indexes and rows
            self.db.execute("SELECT count(*) FROM (SELECT domain FROM website ORDER BY domain)").fetchall()
            self.db.execute("SELECT count(*) FROM (SELECT website_id, backup_id FROM backup "
                            "ORDER BY website_id, backup_id)").fetchall()
            self.db.execute("SELECT sum(progress), max(id) FROM backup").fetchall()
        elif what == "jobs":
            self.db.execute("SELECT (SELECT max(created_at) FROM execution WHERE job_id = job.id) FROM job").fetchall()
        elif what == "metrics":  # each job's newest success, its row, and its latest proof
            self.db.execute(
                "SELECT e.*, (SELECT max(proven_restorable_at) FROM execution WHERE job_id = job.id "
                "AND proven_restorable_at IS NOT NULL) FROM job LEFT JOIN execution e ON e.id = "
                "(SELECT id FROM execution WHERE job_id = job.id AND status = 'Success' AND type = 'Backup' "
                "ORDER BY created_at DESC, id DESC LIMIT 1)").fetchall()
        elif what in ("history", "page:history"):  # each page's index entries and rows, as the listing reads them
            for path in set(self.history_paths if what == "history" else self.page_history_paths):
                if "before=" in path:
                    self.db.execute("SELECT * FROM execution WHERE (created_at, id) < (SELECT created_at, id "
                                    "FROM execution WHERE id = ?) ORDER BY created_at DESC, id DESC LIMIT ?",
                                    (path.rsplit("=", 1)[1], HISTORY_PAGE + 1)).fetchall()
                elif "jobId=" in path:
                    job_id = path.split("jobId=")[1].split("&")[0]
                    status = " AND status = 'Success'" if "status=" in path else ""
                    self.db.execute(f"SELECT * FROM execution WHERE job_id = ?{status} "
                                    "ORDER BY created_at DESC, id DESC LIMIT ?", (job_id, HISTORY_PAGE + 1)).fetchall()
        elif what in ("page:websites", "page:website"):
            # The first page by domain (site0, site1, site10, site100, …: spread over the file) and its backups.
            self.db.execute("SELECT w.*, b.* FROM website w LEFT JOIN backup b ON b.id = (SELECT id FROM backup "
                            "WHERE website_id = w.id ORDER BY created_at DESC, id DESC LIMIT 1) "
                            "ORDER BY w.domain LIMIT 51").fetchall()
            for k in range(50):
                self.db.execute("SELECT * FROM backup WHERE website_id = (SELECT id FROM website WHERE domain = ?) "
                                "ORDER BY created_at DESC, id DESC", (common.SITE_DOMAIN.format(k),)).fetchall()

    def wrk(self, server, what, seconds):
        if what == "webhook":
            return common.wrk(server.url + "/webhooks/backup-progress", seconds, 1, threads=1,
                              mode="webhook", token=common.TOKEN, sites=self.sites, backup_ids=self.backup_ids)
        signed_in = {"cookie": self.sign_in(server)} if what.startswith("page:") else {}
        return common.wrk(server.url, seconds, 1, threads=1, mode="paths", paths_file=self.paths[what],
                          api_key=self.key, **signed_in)

    def sign_in(self, server):
        """The dashboard's session cookie for this side's key, signed in once through the sign-in form."""
        if self.cookie is None:
            http = requests.Session()
            form = http.get(f"{server.url}/sign-in", timeout=10)
            token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
            http.post(f"{server.url}/sign-in", data={"key": self.key, "csrf_token": token}, timeout=10,
                      allow_redirects=False).raise_for_status()
            self.cookie = f"backhook_session={http.cookies['backhook_session']}"
        return self.cookie

    def claim_latencies(self, server, samples):
        """Latencies (ms) from a trigger over HTTP until `backhook worker` has claimed it, one run at a time.

        The request and the wake-up that come with each claim cost the same on
        both databases, so the ratio still shows what the history costs it.
        """
        job_id = common.add_job(self.data_dir, "bench-claim", "command:true", self.data_dir / "backups",
                                "--keep", "1")
        http = requests.Session()
        http.headers["Authorization"] = f"Bearer {self.key}"
        latencies = []
        with common.worker(common.backhook_env(self.data_dir)):
            for _ in range(samples + 5):
                started = time.perf_counter()
                response = http.post(f"{server.url}/api/jobs/{job_id}/run", timeout=10)
                response.raise_for_status()
                execution_id = response.json()["executionId"]
                while self.status(execution_id) == "Pending":
                    time.sleep(0.0002)  # short against the claim, long enough to leave the worker its CPU
                latencies.append((time.perf_counter() - started) * 1000)
                deadline = time.monotonic() + 30
                while self.status(execution_id) not in FINISHED:  # so that the next claim finds no run in its way
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{self.name}: execution {execution_id} did not finish within 30 s")
                    time.sleep(0.005)
        return latencies[5:]  # the first calls pay for connections and cold pages

    def status(self, execution_id):
        return self.db.execute("SELECT status FROM execution WHERE id = ?", (execution_id,)).fetchall()[0][0]


def main(argv=()):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--executions", type=int, default=1_000_000)
    parser.add_argument("--websites", type=int, default=100_000)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--claims", type=int, default=200)
    parser.add_argument("--only", type=lambda value: value.split(","), default=MEASURES,
                        help=f"a comma-separated subset of {','.join(MEASURES)}")
    parser.add_argument("--quick", action="store_true", help="a tiny database: checks the harness only")
    args = parser.parse_args(argv)
    unknown = set(args.only) - set(MEASURES)
    if unknown:
        parser.error(f"--only: unknown {', '.join(sorted(unknown))}; choose from {', '.join(MEASURES)}")
    if args.quick:
        args.executions, args.websites, args.jobs, args.rounds, args.seconds, args.claims = 2000, 200, 20, 1, 1, 10

    empty_dir, full_dir = common.fresh_dir("scale-empty"), common.fresh_dir("scale-full")
    create_database(empty_dir, args.jobs, 50)
    with common.transaction(empty_dir) as db:  # each job's history page, finished
        now = common.now_ms()
        # Shaped as the full database's successes (size, path, checksum, log lines), so that a page or a poll
        # shows as much on both and the ratio is what the history's size costs.
        db.executemany("INSERT INTO execution (id, job_id, status, progress, stage, created_at, started_at, ended_at, "
                       "size, path, sha256, attempts, worker_id) "
                       "VALUES (?, ?, 'Success', 100, 'Completed', ?, ?, ?, 75000000, ?, ?, 1, 'bench-host-1')",
                       [(execution_id, job_id, now - age, now - age, now - age,
                         f"/var/backups/backhook/{job_id}/{now - age}.tar.zst", "ab" * 32)
                        for (job_id,) in db.execute("SELECT id FROM job").fetchall()
                        for age in range(HISTORY_PAGE) for execution_id in [common.new_id()]])
        db.execute(LOG_LINES_SQL, {"logs": LOGS_PER_EXECUTION})
        # the sites synced, with as many backups each as in the full database, so that the pages show as much
        db.execute("UPDATE website SET synced_at = ?, remote_backups = '[]'", (now,))
        db.executemany("INSERT INTO backup (id, website_id, backup_id, status, progress, created_at, updated_at) "
                       "VALUES (?, ?, ?, 'completed', 100, ?, ?)",
                       [(common.new_id(), site_id, f"bk-{site_number}-{number}", now, now)
                        for site_number, (site_id,) in enumerate(db.execute("SELECT id FROM website").fetchall())
                        for number in range(BACKUPS_PER_SITE)])
        count_tallies(db)
    empty_key = common.api_key(empty_dir)
    full_key = full_database(full_dir, args.executions, args.jobs, args.websites)
    args.full_gb = (full_dir / "backhook.db").stat().st_size / 1e9
    sides = [Side("empty", empty_dir, empty_key, 50, 2000),
             Side("full", full_dir, full_key, args.websites, args.websites * BACKUPS_PER_SITE)]

    measures = [what for what in MEASURES if what in args.only and what != "claim"]
    p50 = {(side.name, what): [] for side in sides for what in measures}
    servers = {}
    try:
        for side in sides:
            servers[side.name] = common.serve(common.backhook_env(side.data_dir))
        for side in sides:  # warm up each server and its page cache, not measured
            for what in measures if not args.quick else ():
                side.wrk(servers[side.name], what, 1)
        for round_number in range(args.rounds):
            for what in measures:
                for side in sides:
                    side.warm(what)
                    result = side.wrk(servers[side.name], what, args.seconds)
                    assert result["errors"] == 0, (side.name, what, result)
                    p50[side.name, what].append(result["p50_ms"])
                    print(f"round {round_number + 1} {what:9} {side.name:5} p50 {result['p50_ms']:.2f} ms "
                          f"({result['requests']} requests)", flush=True)
        for side in sides if "claim" in args.only else ():
            p50[side.name, "claim"] = [common.median(side.claim_latencies(servers[side.name], args.claims))]
            print(f"claim {side.name:5} p50 {p50[side.name, 'claim'][0]:.2f} ms", flush=True)
        if "claim" in args.only:
            measures.append("claim")
    finally:
        for server in servers.values():
            server.stop()
    section = report(p50, measures, args)
    print(section)
    return section


def report(p50, measures, args):
    rows, all_met = [], True
    for what in measures:
        empty, full = common.median(p50["empty", what]), common.median(p50["full", what])
        ratio = full / empty
        all_met &= ratio <= TARGET_RATIO
        rows.append([what, f"{empty:.2f}", f"{full:.2f}", f"**{ratio:.2f}×**", common.verdict(ratio <= TARGET_RATIO)])
    return "\n".join([
        "## Scale",
        "",
        f"Full database: {args.executions:,} executions over {args.jobs:,} jobs with {LOGS_PER_EXECUTION} log lines "
        "each (one success in 100 proven restorable), "
        f"{args.websites:,} websites with {BACKUPS_PER_SITE} backups and {EVENTS_PER_BACKUP} events per backup "
        f"({args.full_gb:.2f} GB; filled once with INSERT … SELECT in about a minute, cached under var/bench/). "
        f"Empty database: the {args.jobs:,} jobs, {HISTORY_PAGE} executions each (shaped as the full one's successes, "
        f"{LOGS_PER_EXECUTION} log lines each), 50 websites, synced, with {BACKUPS_PER_SITE} backups each. "
        "The history is "
        f"`GET /api/executions?limit={HISTORY_PAGE}` unfiltered, by job, by status, by both, by type and "
        "from a random `before`, one sixth each. Median latency over "
        f"{args.rounds} alternating rounds of {args.seconds:g} s, one connection (wrk -c 1 -t 1); "
        f"the claim is timed from before `POST /api/jobs/<id>/run` until `backhook worker` has made the "
        f"execution leave Pending (a `command:true` job, one run at a time), median of {args.claims}. "
        "Before each run the pages its requests need are read once (see `Side.warm`): this machine pages "
        "out file pages unused for ~30 s, which would otherwise make this a disk benchmark.",
        "",
        common.table(["hot path", "empty p50 ms", "full p50 ms", "ratio", f"≤ {TARGET_RATIO}×"], rows),
        "",
        f"- Verdict: {common.verdict(all_met)}",
    ])


if __name__ == "__main__":
    common.run_standalone(main)
