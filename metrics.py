"""What GET /metrics exports to Prometheus, read from the database at each scrape.

Nothing comes from a process's memory. Every family is read when Prometheus
asks, from the database (the webhook spool from the data directory), inside
one read snapshot: every gunicorn process on every machine answers the same
numbers, and they agree with each other. What a GROUP BY over the whole
history would cost at each scrape is kept as counters instead, written in
the transactions that change what they count (the *_tally tables, schema.sql
version 10); the per-job series are one query over the jobs that finds each
job's rows through an index (tests/test_query_plans.py, bench/scale.py).

FAMILIES lists what a scrape exports: each function takes the Scrape and
returns prometheus_client metric families. A new concern adds its function
to the list (the notification outbox: `backhook_notifications{status}`).
"""
from dataclasses import dataclass
from importlib.metadata import version

from peewee import JOIN, fn
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

import heartbeats
import spool
from database import opened
from models import BackupTally, Execution, Job, RunTally, WebhookTally, now_ms
from statuses import FINISHED, BackupStatus, EventKind, ExecutionStatus, ExecutionType, WebhookOutcome

JOB_LABELS = ["job_id", "job_name"]


@dataclass(frozen=True)
class Scrape:
    data_dir: str
    now: int  # ms since the epoch: one clock reading for the whole scrape


def exposition(data_dir, accept=None, now=None):
    """(body, content type) of one scrape, in the format the `Accept` header asks for."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector(Scrape(data_dir, now_ms() if now is None else now)))
    encode, content_type = choose_encoder(accept)
    return encode(registry), content_type


class Collector:
    """A prometheus_client collector for one scrape: FAMILIES, read in one snapshot."""

    def __init__(self, scrape):
        self.scrape = scrape

    def collect(self):
        with opened().snapshot():
            return [family for export in FAMILIES for family in export(self.scrape)]


def seconds(ms):
    return ms / 1000


# --- jobs ------------------------------------------------------------------------------

def newest_success(kind, column):
    """`column` of the job's newest successful execution of type `kind`, as a subquery per job row.

    Newest by creation, the order of the (job_id, status, type, created_at, id)
    index, so each job costs one index probe however long its history.
    """
    execution = Execution.alias()
    return (execution.select(getattr(execution, column))
            .where((execution.job == Job.id) & (execution.status == ExecutionStatus.SUCCESS)
                   & (execution.type == kind))
            .order_by(execution.created_at.desc(), execution.id.desc()).limit(1))


def job_rows():
    """Every job with its newest successful backup's times and size, and when it was last proven restorable.

    Proven restorable: a restore drill of one of its backups succeeded (the
    backup's proven_restorable_at, through the execution_job_proven index),
    or a restore of one did: both read the backup back and checked it.
    """
    last = Execution.alias()
    proven = Execution.alias()
    last_proof = (proven.select(fn.MAX(proven.proven_restorable_at))
                  .where((proven.job == Job.id) & proven.proven_restorable_at.is_null(False)))
    return (Job.select(Job.id, Job.name, Job.enabled, Job.created_at, last.started_at, last.ended_at, last.size,
                       last_proof.alias("proven"), newest_success(ExecutionType.RESTORE, "ended_at").alias("restored"))
            .join(last, JOIN.LEFT_OUTER, on=(last.id == newest_success(ExecutionType.BACKUP, "id")))
            .order_by(Job.name).tuples())


def job_families(scrape):
    enabled = GaugeMetricFamily("backhook_job_enabled", "1 while the job may run, 0 when it is disabled",
                                labels=JOB_LABELS)
    created = GaugeMetricFamily("backhook_job_created_timestamp_seconds", "When the job was added (Unix time)",
                                labels=JOB_LABELS)
    success = GaugeMetricFamily("backhook_job_last_success_timestamp_seconds",
                                "When the job's newest successful backup ended (Unix time); absent before its first",
                                labels=JOB_LABELS)
    duration = GaugeMetricFamily("backhook_job_last_success_duration_seconds",
                                 "How long the job's newest successful backup ran", labels=JOB_LABELS)
    size = GaugeMetricFamily("backhook_job_last_success_size_bytes",
                             "Bytes the job's newest successful backup stored", labels=JOB_LABELS)
    restorable = GaugeMetricFamily("backhook_job_last_restorable_timestamp_seconds",
                                   "When a restore drill or a restore of one of the job's backups last succeeded "
                                   "(Unix time); absent before the first", labels=JOB_LABELS)
    names = {}
    for job_id, name, is_enabled, created_at, started_at, ended_at, stored, proven, restored in job_rows():
        labels = [job_id, name]
        names[job_id] = name
        enabled.add_metric(labels, 1 if is_enabled else 0)
        created.add_metric(labels, seconds(created_at))
        if ended_at is not None:
            success.add_metric(labels, seconds(ended_at))
            duration.add_metric(labels, seconds(ended_at - (started_at or ended_at)))
        if stored is not None:  # a wpsec:// backup whose site offered no download stores nothing
            size.add_metric(labels, stored)
        if proven is not None or restored is not None:
            restorable.add_metric(labels, seconds(max(proven or 0, restored or 0)))
    return [enabled, created, success, duration, size, restorable, job_runs(names)]


def job_runs(names):
    """Every job's ended executions by type and status, 0 for each that has none yet (so rate() sees the first)."""
    counts = {(job_id, kind, status): count for job_id, kind, status, count in
              RunTally.select(RunTally.job, RunTally.type, RunTally.status, RunTally.count).tuples()}
    runs = CounterMetricFamily("backhook_job_runs", "Executions of the job that ended, by type and status",
                               labels=[*JOB_LABELS, "type", "status"])
    for job_id, name in names.items():
        for kind in ExecutionType:
            for status in sorted(FINISHED):
                runs.add_metric([job_id, name, kind, status], counts.get((job_id, kind, status), 0))
    return runs


# --- the queue and the workers ---------------------------------------------------------

def queue_families(scrape):
    pending = Execution.select().where(Execution.status == ExecutionStatus.PENDING)
    oldest = pending.select(fn.MIN(Execution.created_at)).scalar()
    families = [
        GaugeMetricFamily("backhook_queue_depth", "Pending executions, waiting for a worker", value=pending.count()),
        GaugeMetricFamily("backhook_executions_running", "Running executions",
                          value=Execution.select().where(Execution.status == ExecutionStatus.RUNNING).count()),
        GaugeMetricFamily("backhook_workers_seen",
                          f"Workers whose heartbeat is at most {heartbeats.SEEN_WITHIN_MS // 1000} s old",
                          value=heartbeats.workers_seen(scrape.now)),
    ]
    if oldest is not None:
        families.append(GaugeMetricFamily("backhook_queue_oldest_timestamp_seconds",
                                          "When the oldest Pending execution was queued (Unix time); absent "
                                          "while the queue is empty", value=seconds(oldest)))
    return families


# --- webhooks and websites -------------------------------------------------------------

def webhook_families(scrape):
    counts = {(kind, outcome): count for kind, outcome, count in
              WebhookTally.select(WebhookTally.kind, WebhookTally.outcome, fn.SUM(WebhookTally.count))
              .group_by(WebhookTally.kind, WebhookTally.outcome).tuples()}
    events = CounterMetricFamily("backhook_webhook_events",
                                 "WPSec webhook events by kind and outcome, spooled ones once replayed "
                                 "(401s never reach the database and are not counted)", labels=["kind", "outcome"])
    for kind in EventKind:
        for outcome in WebhookOutcome:
            events.add_metric([kind, outcome], counts.get((kind, outcome), 0))
    waiting, rejected = spool.counts(scrape.data_dir)
    spooled = GaugeMetricFamily("backhook_webhook_spool_events",
                                "Webhook events in this machine's spool: waiting for the worker's replay, or "
                                "rejected by it (kept in webhook-spool.rejected.jsonl)", labels=["state"])
    spooled.add_metric(["waiting"], waiting)
    spooled.add_metric(["rejected"], rejected)
    return [events, spooled]


def website_families(scrape):
    counts = dict(BackupTally.select(BackupTally.status, BackupTally.count).tuples())
    backups = GaugeMetricFamily("backhook_website_backups", "The websites' WPSec backups by status",
                                labels=["status"])
    for status in BackupStatus:
        backups.add_metric([status], counts.get(status, 0))
    return [backups]


def build_families(scrape):
    return [InfoMetricFamily("backhook_build", "The backhook version serving this scrape",
                             value={"version": version("backhook")})]


FAMILIES = [job_families, queue_families, webhook_families, website_families, build_families]
