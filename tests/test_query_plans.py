"""Every hot query uses an index: EXPLAIN QUERY PLAN of the SQL the real code runs.

Each test runs one hot path of the code while recording the statements it
sends to SQLite, then asks SQLite how it would run each of them. A plan step
that reads a whole table ("SCAN execution") or a whole index ("SCAN execution
USING INDEX ...") would make the path slower as the history grows, which is
what bench/scale.py measures; here it fails at once, with no timing involved.
The history listing's plans are also asked of PostgreSQL, with its
sequential scans and sorts priced out, so that only a missing index makes
it fall back to them.
"""
import itertools
import json
import re

import pytest

import database
import models
from models import Backup, Execution, ExecutionLog, Job, Website
from statuses import ExecutionStatus, ExecutionType
from support import PROJECT, TOKEN

FULL_SCAN = re.compile(r"^SCAN (?!CONSTANT ROW)(\w+)")


@pytest.fixture
def record_sql(recorded, backend):
    """Record (sql, params) of every statement SQLite runs; yields the list."""
    if backend != "sqlite":
        pytest.skip("EXPLAIN QUERY PLAN is SQLite's; PostgreSQL plans differ by design")
    return recorded


@pytest.fixture
def recorded(app, monkeypatch):
    """Record (sql, params) of every statement, on either backend; yields the list."""
    db = database.opened()
    original = db.execute_sql
    statements = []

    def execute_sql(sql, params=None, *args, **kwargs):
        statements.append((sql, tuple(params or ())))
        return original(sql, params, *args, **kwargs)

    monkeypatch.setattr(db, "execute_sql", execute_sql)
    return statements


def full_scans(statements, allowed=()):
    """The plan steps that read a whole table or index, with their statements."""
    connection = database.opened().connection()
    found = []
    for sql, params in statements:
        if not re.match(r"\s*(SELECT|UPDATE|DELETE|INSERT|WITH)", sql, re.IGNORECASE):
            continue
        tables = {alias: table for table, alias in re.findall(r'"(\w+)" AS "(\w+)"', sql)}
        for *_ids, detail in connection.execute("EXPLAIN QUERY PLAN " + sql, params):
            scan = FULL_SCAN.match(detail)
            if scan and tables.get(scan.group(1), scan.group(1)) not in allowed:
                found.append(f"{detail}\n    in: {sql}")
    return found


def test_a_query_without_an_index_is_caught(app, record_sql):
    list(Execution.select().where(Execution.error == "disk full"))
    assert [scan.splitlines()[0] for scan in full_scans(record_sql)] == ["SCAN t1"]


@pytest.fixture
def history(app, make_job):
    """A job with a few finished executions, each with log lines."""
    job = make_job()
    with models.database.atomic():
        for number in range(3):
            execution = Execution.create(job=job.id, status=ExecutionStatus.SUCCESS, created_at=1000 + number)
            for line in range(3):
                ExecutionLog.create(execution=execution.id, message=f"line {line}")
    return job, execution


def test_execution_by_id_uses_an_index(history, client, auth, record_sql):
    _job, execution = history
    record_sql.clear()
    assert client.get(f"/api/executions/{execution.id}", headers=auth).status_code == 200
    assert any('"execution"' in sql for sql, _ in record_sql) and full_scans(record_sql) == []


def test_execution_logs_by_execution_use_an_index(history, client, auth, record_sql):
    _job, execution = history
    record_sql.clear()
    response = client.get(f"/api/executions/{execution.id}?includeLogs=true", headers=auth)
    assert len(response.get_json()["data"]["logs"]) == 3
    assert full_scans(record_sql) == []


def test_jobs_last_execution_uses_an_index_in_one_query(history, make_job, record_sql):
    job, execution = history
    never_run = make_job(name="zz-never-run")
    record_sql.clear()
    listed = [(listed.id, listed.last_id, listed.last_status) for listed in Job.listing()]
    assert listed == [(job.id, execution.id, ExecutionStatus.SUCCESS), (never_run.id, None, None)]
    assert len(record_sql) == 1  # not one more query per job
    # The listing reads the job table whole by design; each job's newest execution must not scan.
    assert full_scans(record_sql, allowed=("job",)) == []


def test_job_listing_reads_only_the_job_table_whole(history, client, auth, record_sql):
    record_sql.clear()
    assert client.get("/api/jobs", headers=auth).status_code == 200
    # Listing every job reads the job table, and every job's destinations in one query, by design; each job's
    # last execution must not scan.
    assert full_scans(record_sql, allowed=("job", "job_destination")) == []


def test_polling_over_http_uses_indexes(history, client, auth, record_sql):
    _job, execution = history
    record_sql.clear()
    assert client.get(f"/api/executions/{execution.id}?includeLogs=true", headers=auth).status_code == 200
    assert full_scans(record_sql) == []


def test_website_by_domain_uses_an_index(app, record_sql):
    with models.database.atomic():
        Website.create(domain="example.com")
    record_sql.clear()
    assert Website.by_domain(" Example.COM. ") is not None
    assert full_scans(record_sql) == []


def test_backup_by_website_and_backup_id_uses_an_index(app, record_sql):
    with models.database.atomic():
        site = Website.create(domain="example.com")
        Backup.create(website=site.id, backup_id="b-1", status="pending")
    record_sql.clear()
    assert Backup.get_or_none((Backup.website == site.id) & (Backup.backup_id == "b-1")) is not None
    assert full_scans(record_sql) == []


WEBHOOKS_MERGED = (PROJECT / "routes" / "webhooks.py").exists()
WORKER_MERGED = "not built yet" not in (PROJECT / "worker.py").read_text()


@pytest.mark.skipif(not WEBHOOKS_MERGED, reason="the webhook routes are not merged yet")
def test_progress_webhook_uses_indexes(client, record_sql):
    with models.database.atomic():
        site = Website.create(domain="example.com")
        Backup.create(website=site.id, backup_id="b-1", status="pending")
    headers = {"x-wpfort-token": TOKEN}
    for backup_id in ("b-1", "b-2"):  # an update and a creation
        record_sql.clear()
        response = client.post("/webhooks/backup-progress", headers=headers,
                               json={"domain": "example.com", "backup_id": backup_id, "progress": 40})
        assert response.status_code == 200, response.get_json()
        assert full_scans(record_sql) == []


@pytest.mark.skipif(not WEBHOOKS_MERGED, reason="the website routes are not merged yet")
def test_backup_listing_uses_an_index(client, auth, record_sql):
    with models.database.atomic():
        site = Website.create(domain="example.com")
        for number in range(5):
            Backup.create(website=site.id, backup_id=f"b-{number}", status="completed", created_at=number)
    for query in ("", "?limit=2&before=b-3"):
        record_sql.clear()
        response = client.get(f"/api/websites/example.com/backups{query}", headers=auth)
        assert response.status_code == 200, response.get_json()
        assert full_scans(record_sql) == []


@pytest.mark.skipif(not WORKER_MERGED, reason="the worker is not merged yet")
def test_claim_and_running_count_use_indexes(history, data_dir, record_sql):
    import config
    import worker
    job, _execution = history
    pending = Execution.enqueue(job)
    claimer = worker.Worker(config.load({"BACKHOOK_DATA_DIR": str(data_dir)}))
    record_sql.clear()
    assert [row.id for row in claimer.claim_pending()] == [pending.id]
    assert full_scans(record_sql) == []


def test_claiming_restores_before_backups_uses_indexes(history, data_dir, record_sql):
    import config
    import worker
    from statuses import ExecutionType
    job, done = history
    backup = Execution.enqueue(job)
    with models.database.atomic():
        restore = Execution.create(job=job.id, type=ExecutionType.RESTORE, restores=done.id)
    models.Setting.write("max_concurrent_jobs", 2)
    claimer = worker.Worker(config.load({"BACKHOOK_DATA_DIR": str(data_dir)}))
    record_sql.clear()
    assert {row.id for row in claimer.claim_pending()} == {backup.id, restore.id}
    assert full_scans(record_sql) == []
    plans = [detail for sql, params in record_sql if '"type" = ?' in sql and "LIMIT" in sql
             for *_ids, detail in database.opened().connection().execute("EXPLAIN QUERY PLAN " + sql, params)]
    assert plans and all("execution_status_type_created" in detail and "TEMP B-TREE" not in detail
                         for detail in plans), plans


@pytest.mark.skipif(not WORKER_MERGED, reason="the worker is not merged yet")
def test_reclaim_reads_only_the_leased_executions(history, data_dir, record_sql):
    import config
    import worker
    job, _execution = history
    lapsed = Execution.enqueue(job)
    Execution.update(status=ExecutionStatus.RUNNING, worker_id="gone", attempts=1, lease_expires_at=1).where(
        Execution.id == lapsed.id).execute()
    reclaimer = worker.Worker(config.load({"BACKHOOK_DATA_DIR": str(data_dir)}))
    record_sql.clear()
    reclaimer.reclaim_lapsed()
    connection = database.opened().connection()
    reads = [detail for sql, params in record_sql if "lease_expires_at" in sql and sql.lstrip().startswith("SELECT")
             for *_ids, detail in connection.execute("EXPLAIN QUERY PLAN " + sql, params)
             if re.match(r"(SEARCH|SCAN) t1\b", detail)]
    # Through the index of leases, not through every Success of the history.
    assert reads and all("INDEX execution_lease " in detail for detail in reads), reads
    assert full_scans(record_sql) == []


def test_the_due_scheduled_runs_are_found_through_the_next_run_index(history, data_dir, record_sql):
    import config
    import worker
    job, _execution = history
    Job.update(schedule="0 3 * * *", next_run_at=1).where(Job.id == job.id).execute()
    scheduler = worker.Worker(config.load({"BACKHOOK_DATA_DIR": str(data_dir)}))
    record_sql.clear()
    scheduler.enqueue_due_runs()
    assert Execution.select().where(Execution.job == job.id).count() == 4  # the history's three and the due run
    assert full_scans(record_sql) == []
    connection = database.opened().connection()
    reads = [detail for sql, params in record_sql if '"next_run_at"' in sql and sql.lstrip().startswith("SELECT")
             for *_ids, detail in connection.execute("EXPLAIN QUERY PLAN " + sql, params)
             if re.match(r"(SEARCH|SCAN) t1\b", detail)]
    # Through the index of scheduled jobs, not through every job.
    assert reads and all("job_next_run" in detail for detail in reads), reads

# --- the history listing: each filter combination along an index of its own -----------

HISTORY_FILTERS = [dict(combination) for size in range(4) for combination in itertools.combinations(
    [("jobId", None), ("status", ExecutionStatus.FAILED), ("type", ExecutionType.RESTORE)], size)]


def history_queries(history, params, paged):
    job, execution = history
    params = {name: job.id if name == "jobId" else value for name, value in params.items()}
    return {**params, "limit": 2, **({"before": execution.id} if paged else {})}


def temp_sorts(statements):
    """Plan steps that sort rows in a temporary B-tree: the order does not come from an index."""
    connection = database.opened().connection()
    return [f"{detail}\n    in: {sql}" for sql, params in statements
            for *_ids, detail in connection.execute("EXPLAIN QUERY PLAN " + sql, params)
            if "TEMP B-TREE" in detail]


@pytest.mark.parametrize("paged", [False, True], ids=["first page", "before"])
@pytest.mark.parametrize("params", HISTORY_FILTERS, ids=lambda params: "+".join(params) or "unfiltered")
def test_history_listing_reads_an_index_in_order_for_every_filter_combination(
        history, client, auth, record_sql, params, paged):
    record_sql.clear()
    response = client.get("/api/executions", headers=auth, query_string=history_queries(history, params, paged))
    assert response.status_code == 200, response.get_json()
    scans = full_scans(record_sql)
    if not params and not paged:
        # The newest page of everything walks the (created_at, id) index from its end and stops at the limit.
        assert [scan.splitlines()[0] for scan in scans] == ["SCAN t1 USING INDEX execution_created"]
    else:
        assert scans == []
    assert temp_sorts(record_sql) == []


def postgresql_plan_problems(statements):
    """Sequential scans of the execution table and sorts in PostgreSQL's plans for `statements`.

    Both are priced out (enable_seqscan, enable_sort), so the planner picks
    them only when no index can serve the query.
    """
    problems = []
    with models.database.atomic():
        models.database.execute_sql("SET LOCAL enable_seqscan = off")
        models.database.execute_sql("SET LOCAL enable_sort = off")
        for sql, params in statements:
            if "FROM \"execution\"" not in sql or not sql.lstrip().upper().startswith("SELECT"):
                continue
            plan = json.loads(json.dumps(models.database.execute_sql("EXPLAIN (FORMAT JSON) " + sql, params)
                                         .fetchone()[0]))[0]["Plan"]
            nodes = [plan]
            while nodes:
                node = nodes.pop()
                nodes.extend(node.get("Plans", ()))
                if "Sort" in node["Node Type"] or (node["Node Type"] == "Seq Scan"
                                                   and node.get("Relation Name") == "execution"):
                    problems.append(f"{node['Node Type']} {node.get('Relation Name', '')}\n    in: {sql}")
    return problems


@pytest.mark.postgresql_only("EXPLAIN of PostgreSQL's planner")
@pytest.mark.parametrize("paged", [False, True], ids=["first page", "before"])
@pytest.mark.parametrize("params", HISTORY_FILTERS, ids=lambda params: "+".join(params) or "unfiltered")
def test_history_listing_needs_no_sequential_scan_or_sort_on_postgresql(
        history, client, auth, recorded, params, paged):
    recorded.clear()
    response = client.get("/api/executions", headers=auth, query_string=history_queries(history, params, paged))
    assert response.status_code == 200, response.get_json()
    assert any("ORDER BY" in sql for sql, _params in recorded)
    assert postgresql_plan_problems(recorded) == []


@pytest.mark.postgresql_only("EXPLAIN of PostgreSQL's planner")
def test_a_postgresql_query_no_index_serves_is_caught(history, recorded):
    recorded.clear()
    list(Execution.select().where(Execution.error == "disk full").order_by(Execution.size))
    assert sorted(problem.splitlines()[0] for problem in postgresql_plan_problems(recorded)) == [
        "Seq Scan execution", "Sort "]


# --- /metrics: one query for every job, each job's rows through an index -------------------

SMALL_BY_DESIGN = ("job", "run_tally", "webhook_tally", "backup_tally")  # one row per job, or a few


def scrape_statements(client, make_key, recorded):
    reader = {"Authorization": f"Bearer {make_key('metrics:read')}"}
    client.get("/metrics", headers=reader)  # the key's first use records it; the scrape after reads only
    recorded.clear()
    assert client.get("/metrics", headers=reader).status_code == 200
    return list(recorded)


def test_a_scrape_reads_each_jobs_newest_rows_through_indexes_in_as_many_queries_for_any_number_of_jobs(
        history, client, make_key, make_job, record_sql):
    job, backup = history
    Execution.update(proven_restorable_at=5).where(Execution.id == backup.id).execute()
    with models.database.atomic():
        Execution.create(job=job.id, type=ExecutionType.RESTORE, status=ExecutionStatus.SUCCESS, created_at=2000)
        Execution.create(job=job.id, created_at=3000)
    few = scrape_statements(client, make_key, record_sql)
    assert full_scans(few, allowed=SMALL_BY_DESIGN) == []
    assert temp_sorts(few) == []
    # Not merely some index on job_id, which would read the job's whole history: the newest Success
    # of each type straight from the end of its range, and the latest proof from the index of proofs.
    connection = database.opened().connection()
    plans = [detail for sql, params in few if "proven_restorable_at" in sql
             for *_ids, detail in connection.execute("EXPLAIN QUERY PLAN " + sql, params)
             if detail.startswith("SEARCH") and "execution" in detail]
    assert sum("INDEX execution_job_status_type_created " in detail for detail in plans) == 2, plans
    assert sum("INDEX execution_job_proven " in detail for detail in plans) == 1, plans
    for number in range(5):
        make_job(name=f"more-{number}")
    assert len(scrape_statements(client, make_key, record_sql)) == len(few)  # no query per job


@pytest.mark.postgresql_only("EXPLAIN of PostgreSQL's planner")
def test_a_scrape_needs_no_sequential_scan_of_the_executions_or_sort_on_postgresql(
        history, client, make_key, recorded):
    statements = scrape_statements(client, make_key, recorded)
    assert any("proven_restorable_at" in sql for sql, _params in statements)
    assert postgresql_plan_problems(statements) == []

# --- the dashboard's pages: the same indexes, and no query per row ------------------------

@pytest.fixture
def dashboard(history, client, make_key):
    """A client signed in to the dashboard with every permission, over `history` and one website."""
    import re

    with models.database.atomic():
        site = Website.create(domain="shop.example")
        Backup.create(website=site.id, backup_id="b-1", status="in_progress")
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/sign-in").get_data(as_text=True)).group(1)
    assert client.post("/sign-in", data={"key": make_key(), "csrf_token": token}).status_code == 303
    return client


def dashboard_pages(history):
    _job, execution = history
    # (page, the tables it reads whole by design: the job table of the job listing and the history's job
    # choice, the few API keys, and the first page of websites, which walks the domain index up to its limit)
    return [("/jobs", ("job", "job_destination")), ("/history", ("job",)),
            ("/history?status=Success&createdBefore=2030-01-01", ("job",)), (f"/history?jobId={_job.id}", ("job",)),
            ("/jobs/new", ()), (f"/jobs/{_job.id}/edit", ()),
            (f"/executions/{execution.id}", ()), (f"/executions/{execution.id}/live", ()),
            ("/websites", ("website",)), ("/websites?after=a", ()), ("/websites/shop.example", ()),
            ("/keys", ("api_key",)), ("/settings", ())]


def test_every_dashboard_page_uses_indexes(history, dashboard, record_sql):
    for page, whole in dashboard_pages(history):
        record_sql.clear()
        assert dashboard.get(page).status_code == 200, page
        scans = full_scans(record_sql, allowed=whole)
        if page == "/history":  # the newest page walks the (created_at, id) index from its end, as the API's
            assert [scan.splitlines()[0] for scan in scans] == ["SCAN t1 USING INDEX execution_created"]
        else:
            assert scans == [], page
        sorts = [sort for sort in temp_sorts(record_sql) if 'FROM "api_key"' not in sort]  # a few keys, sorted
        assert sorts == [], page


def test_dashboard_pages_ask_as_many_queries_for_many_rows_as_for_one(history, dashboard, make_job, make_key,
                                                                      recorded):
    def counts():
        found = {}
        for page, _whole in dashboard_pages(history):
            recorded.clear()
            assert dashboard.get(page).status_code == 200, page
            found[page] = len(recorded)
        return found

    before = counts()
    with models.database.atomic():
        for number in range(5):
            job = make_job(name=f"more-{number}")
            Execution.create(job=job.id, status=ExecutionStatus.SUCCESS, size=10)
            site = Website.create(domain=f"site-{number}.example")
            Backup.create(website=site.id, backup_id=f"b-{number}", status="completed")
            make_key()
    assert counts() == before


@pytest.mark.postgresql_only("EXPLAIN of PostgreSQL's planner")
def test_dashboard_history_needs_no_sequential_scan_or_sort_on_postgresql(history, dashboard, recorded):
    for page, _whole in dashboard_pages(history):
        if page.startswith(("/history", "/executions")):
            recorded.clear()
            assert dashboard.get(page).status_code == 200, page
            assert postgresql_plan_problems(recorded) == [], page
