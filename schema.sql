-- The backhook schema: the single source of truth for every table.
--
-- Each "-- version N" section is one numbered migration. `backhook init`
-- applies, in order, every section newer than the database's version and
-- records the new version (PRAGMA user_version on SQLite, the
-- schema_version table on PostgreSQL). Never edit a released section:
-- append a new one.
--
-- Timestamps are milliseconds since the Unix epoch, in UTC.

-- version 1

CREATE TABLE api_key (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    prefix        TEXT NOT NULL,
    key_hash      TEXT NOT NULL UNIQUE,
    permissions   TEXT NOT NULL,
    enabled       INTEGER NOT NULL DEFAULT 1,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT,
    last_used_at  BIGINT
);

CREATE TABLE job (
    id               TEXT PRIMARY KEY,
    name             TEXT NOT NULL UNIQUE,
    source           TEXT NOT NULL,
    destination      TEXT NOT NULL,
    compression      TEXT NOT NULL DEFAULT 'zstd',
    keep             INTEGER,
    timeout_seconds  INTEGER NOT NULL DEFAULT 21600,
    enabled          INTEGER NOT NULL DEFAULT 1,
    created_at       BIGINT NOT NULL
);

CREATE TABLE execution (
    id                TEXT PRIMARY KEY,
    job_id            TEXT NOT NULL REFERENCES job (id) ON DELETE CASCADE,
    type              TEXT NOT NULL DEFAULT 'Backup',
    status            TEXT NOT NULL DEFAULT 'Pending',
    progress          INTEGER NOT NULL DEFAULT 0,
    stage             TEXT,
    created_at        BIGINT NOT NULL,
    started_at        BIGINT,
    ended_at          BIGINT,
    size              BIGINT,
    path              TEXT,
    sha256            TEXT,
    error             TEXT,
    attempts          INTEGER NOT NULL DEFAULT 0,
    worker_id         TEXT,
    lease_expires_at  BIGINT,
    cancel_requested  INTEGER NOT NULL DEFAULT 0
);

-- The claim reads Pending in creation order and counts Running.
CREATE INDEX execution_status_created ON execution (status, created_at);
-- A job's history, newest first (lastExecution, retention).
CREATE INDEX execution_job_created ON execution (job_id, created_at);

CREATE TABLE execution_log (
    id            INTEGER PRIMARY KEY,
    execution_id  TEXT NOT NULL REFERENCES execution (id) ON DELETE CASCADE,
    timestamp     BIGINT NOT NULL,
    level         TEXT NOT NULL,
    stage         TEXT,
    message       TEXT NOT NULL
);

CREATE INDEX execution_log_execution ON execution_log (execution_id, id);

CREATE TABLE setting (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);

CREATE TABLE website (
    id                 TEXT PRIMARY KEY,
    domain             TEXT NOT NULL UNIQUE,
    wpsec_url          TEXT,
    wpsec_api_key      TEXT,
    created_at         BIGINT NOT NULL,
    sync_requested_at  BIGINT,
    synced_at          BIGINT,
    remote_backups     TEXT
);

-- The worker finds the sites whose backup list must be fetched again.
CREATE INDEX website_sync_requested ON website (sync_requested_at)
    WHERE sync_requested_at IS NOT NULL;

CREATE TABLE backup (
    id             TEXT PRIMARY KEY,
    website_id     TEXT NOT NULL REFERENCES website (id) ON DELETE CASCADE,
    backup_id      TEXT NOT NULL,
    status         TEXT NOT NULL,
    progress       INTEGER NOT NULL DEFAULT 0,
    error_message  TEXT,
    execution_id   TEXT REFERENCES execution (id) ON DELETE SET NULL,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL,
    completed_at   BIGINT,
    UNIQUE (website_id, backup_id)
);

-- A site's backups, newest first, paged with ?before=.
CREATE INDEX backup_website_created ON backup (website_id, created_at, id);
CREATE INDEX backup_execution ON backup (execution_id)
    WHERE execution_id IS NOT NULL;

CREATE TABLE backup_event (
    id           INTEGER PRIMARY KEY,
    backup_pk    TEXT NOT NULL REFERENCES backup (id) ON DELETE CASCADE,
    kind         TEXT NOT NULL,
    payload      TEXT NOT NULL,
    received_at  BIGINT NOT NULL
);

CREATE INDEX backup_event_backup ON backup_event (backup_pk, id);

-- version 2

-- Why pruning older artifacts failed after this backup was recorded Success;
-- the backup stands, and notifications report it.
ALTER TABLE execution ADD COLUMN retention_error TEXT;
-- The reclaim finds the executions a worker holds a lease on: Running, or
-- Success while its retention runs.
CREATE INDEX execution_lease ON execution (lease_expires_at)
    WHERE lease_expires_at IS NOT NULL;

-- version 3

-- files:// jobs: the tar patterns to leave out (a JSON list of strings), and
-- whether the backup stays on the directory's own file system.
ALTER TABLE job ADD COLUMN excludes TEXT NOT NULL DEFAULT '[]';
ALTER TABLE job ADD COLUMN one_file_system INTEGER NOT NULL DEFAULT 0;

-- version 4

-- GET /api/executions lists newest first by (created_at, id), filtered by any
-- combination of job, status and type and paged with ?before=. Each
-- combination has an index whose equality columns lead and whose (created_at,
-- id) end gives the order, so no page reads rows it does not return, however
-- long the history (tests/test_query_plans.py). The two version 1 indexes
-- become the job's and the status's listing indexes, which serve the claim,
-- lastExecution and retention as before.
DROP INDEX execution_status_created;
DROP INDEX execution_job_created;
CREATE INDEX execution_created ON execution (created_at, id);
CREATE INDEX execution_job_created ON execution (job_id, created_at, id);
CREATE INDEX execution_status_created ON execution (status, created_at, id);
CREATE INDEX execution_type_created ON execution (type, created_at, id);
CREATE INDEX execution_job_status_created ON execution (job_id, status, created_at, id);
CREATE INDEX execution_job_type_created ON execution (job_id, type, created_at, id);
CREATE INDEX execution_status_type_created ON execution (status, type, created_at, id);
CREATE INDEX execution_job_status_type_created ON execution (job_id, status, type, created_at, id);

-- Idempotency-Key on POST /api/jobs/<id>/run: the execution the first call with
-- this key queued, written in that execution's transaction; a key matches for
-- 24 hours and the worker purges it after (by created_at).
CREATE TABLE idempotency_key (
    id            INTEGER PRIMARY KEY,
    job_id        TEXT NOT NULL REFERENCES job (id) ON DELETE CASCADE,
    key           TEXT NOT NULL,
    execution_id  TEXT NOT NULL REFERENCES execution (id) ON DELETE CASCADE,
    created_at    BIGINT NOT NULL,
    UNIQUE (job_id, key)
);

CREATE INDEX idempotency_key_created ON idempotency_key (created_at);
CREATE INDEX idempotency_key_execution ON idempotency_key (execution_id);

-- version 5

-- command: jobs: the shell command that reads a backup on its stdin to restore it
-- (defined only on the command line, like the backup command).
ALTER TABLE job ADD COLUMN restore_command TEXT;
-- A Restore execution: the Backup execution whose artifact it restores, the SRC
-- it restores into ('scratch' for a drill; NULL for the job's own source; it may
-- hold a password, so it is never shown), and whether it may overwrite.
ALTER TABLE execution ADD COLUMN restores TEXT;
ALTER TABLE execution ADD COLUMN restore_target TEXT;
ALTER TABLE execution ADD COLUMN restore_replace INTEGER NOT NULL DEFAULT 0;
-- On a Backup execution: when a restore drill last proved it restorable, and
-- the last drill's status and execution.
ALTER TABLE execution ADD COLUMN proven_restorable_at BIGINT;
ALTER TABLE execution ADD COLUMN last_drill_status TEXT;
ALTER TABLE execution ADD COLUMN last_drill_id TEXT;
-- The claim takes Pending restores before Pending backups, each in creation
-- order, straight from version 4's execution_status_type_created.

-- version 6

-- A job's destinations, in order (issue 15): each backup is written to every
-- one at once. Position 0 is the job's first destination, which job.destination
-- keeps naming for the clients that read it; the old column is migrated here.
CREATE TABLE job_destination (
    id           INTEGER PRIMARY KEY,
    job_id       TEXT NOT NULL REFERENCES job (id) ON DELETE CASCADE,
    position     INTEGER NOT NULL,
    destination  TEXT NOT NULL,
    UNIQUE (job_id, position)
);
INSERT INTO job_destination (job_id, position, destination) SELECT id, 0, destination FROM job;
-- Whether a backup that some destinations failed to store succeeds with the copies that verified.
ALTER TABLE job ADD COLUMN allow_partial_destinations INTEGER NOT NULL DEFAULT 0;
-- Every verified copy of a backup's artifact, written in the transaction that
-- records the backup Success; retention, restore and the download read them.
-- execution.path stays the first copy's location while any copy is left.
CREATE TABLE artifact_copy (
    id            INTEGER PRIMARY KEY,
    execution_id  TEXT NOT NULL REFERENCES execution (id) ON DELETE CASCADE,
    position      INTEGER NOT NULL,
    destination   TEXT NOT NULL,
    location      TEXT NOT NULL,
    UNIQUE (execution_id, position)
);
-- The backups stored before version 6 hold one copy each, on the job's destination.
INSERT INTO artifact_copy (execution_id, position, destination, location)
    SELECT execution.id, 0, job.destination, execution.path
    FROM execution JOIN job ON job.id = execution.job_id
    WHERE execution.type = 'Backup' AND execution.status = 'Success' AND execution.path IS NOT NULL;

-- version 7

-- age encryption: the job's recipients, a JSON list of public keys (age1…,
-- ssh-ed25519 …, ssh-rsa …); NULL when its backups are not encrypted. Public
-- keys only: no private key is ever stored.
ALTER TABLE job ADD COLUMN recipients TEXT;

-- version 8

-- Schedules (schedules.py): a five-field cron expression or an alias such as
-- @daily, read in the job's IANA timezone, which also places its artifacts in
-- days, weeks and months for retention; NULL: the job runs only when
-- triggered. next_run_at is the UTC instant of the next due run: the worker
-- that moves it on with a conditional UPDATE is the one that queues the run,
-- so each due run is queued once however many workers look.
ALTER TABLE job ADD COLUMN schedule TEXT;
ALTER TABLE job ADD COLUMN timezone TEXT NOT NULL DEFAULT 'UTC';
ALTER TABLE job ADD COLUMN next_run_at BIGINT;
-- Every worker reads the earliest next_run_at at each tick and the due ones
-- at their time, so only the scheduled jobs are in the index.
CREATE INDEX job_next_run ON job (next_run_at) WHERE next_run_at IS NOT NULL;
-- Grandfather-father-son retention (retention.py), beside keep: the newest
-- artifact of each of the last N days, ISO weeks and months that have one;
-- NULL: that rule keeps nothing.
ALTER TABLE job ADD COLUMN keep_daily INTEGER;
ALTER TABLE job ADD COLUMN keep_weekly INTEGER;
ALTER TABLE job ADD COLUMN keep_monthly INTEGER;

-- version 9

-- Notifications (issue 16, notifications.py): who is told about a job's runs.
-- kind is webhook (a JSON document signed with `secret`, the Standard Webhooks
-- whsec_… shown once by `notify add`), ping (Healthchecks-style /start,
-- success, /fail) or apprise (any URL the apprise library sends to). on_event
-- is failure, success, always or overdue; job_id NULL watches every job.
-- overdue_seconds arms the dead man's switch: an overdue event when the job
-- has had no success for that long.
CREATE TABLE notification (
    id               TEXT PRIMARY KEY,
    kind             TEXT NOT NULL,
    url              TEXT NOT NULL,
    secret           TEXT,
    job_id           TEXT REFERENCES job (id) ON DELETE CASCADE,
    on_event         TEXT NOT NULL DEFAULT 'failure',
    overdue_seconds  BIGINT,
    created_at       BIGINT NOT NULL
);

CREATE INDEX notification_job ON notification (job_id);

-- The outbox (outbox.py): one message for one notification, written in the
-- transaction of the status change it reports and sent by a worker that holds
-- its lease. status is pending (waiting or being sent), sent or failed (no
-- attempt left). The id is the webhook-id, the same on every attempt.
-- dedupe_key makes an event that several workers may see (overdue) queue once.
CREATE TABLE notification_outbox (
    id                TEXT PRIMARY KEY,
    notification_id   TEXT NOT NULL REFERENCES notification (id) ON DELETE CASCADE,
    event             TEXT NOT NULL,
    job_id            TEXT,
    execution_id      TEXT,
    dedupe_key        TEXT UNIQUE,
    payload           TEXT NOT NULL,
    status            TEXT NOT NULL DEFAULT 'pending',
    attempts          INTEGER NOT NULL DEFAULT 0,
    next_attempt_at   BIGINT NOT NULL,
    worker_id         TEXT,
    lease_expires_at  BIGINT,
    last_error        TEXT,
    created_at        BIGINT NOT NULL,
    sent_at           BIGINT
);

-- The delivery reads the due pending messages, and the notifications being sent to right now.
CREATE INDEX notification_outbox_due ON notification_outbox (status, next_attempt_at);
CREATE INDEX notification_outbox_lease ON notification_outbox (lease_expires_at)
    WHERE lease_expires_at IS NOT NULL;
CREATE INDEX notification_outbox_notification ON notification_outbox (notification_id, status);
CREATE INDEX notification_outbox_created ON notification_outbox (created_at);

-- version 10

-- Worker health (issue 16): each worker's heartbeat, stamped by its claim loop
-- every few seconds and deleted when it stops. /readyz, GET /api/jobs and
-- /metrics count the workers seen in the last minute; the rows a dead worker
-- leaves are purged after a day.
CREATE TABLE worker_heartbeat (
    id          TEXT PRIMARY KEY,
    host        TEXT NOT NULL,
    pid         INTEGER NOT NULL,
    started_at  BIGINT NOT NULL,
    last_seen   BIGINT NOT NULL
);
CREATE INDEX worker_heartbeat_last_seen ON worker_heartbeat (last_seen);

-- Counters for /metrics, each changed in the transaction that changes what it
-- counts, so that a scrape reads a few rows instead of grouping a history of
-- millions (tests/test_query_plans.py, bench/scale.py).
-- Finished executions per job, type and status (Execution.transition), counted
-- from the history so far.
CREATE TABLE run_tally (
    id      INTEGER PRIMARY KEY,
    job_id  TEXT NOT NULL REFERENCES job (id) ON DELETE CASCADE,
    type    TEXT NOT NULL,
    status  TEXT NOT NULL,
    count   BIGINT NOT NULL,
    UNIQUE (job_id, type, status)
);
INSERT INTO run_tally (job_id, type, status, count)
    SELECT job_id, type, status, count(*) FROM execution
    WHERE status IN ('Success', 'Failed', 'Cancelled') GROUP BY job_id, type, status;
-- The websites' WPSec backups per status (remote_backups.py), counted from the
-- backups so far.
CREATE TABLE backup_tally (
    id      INTEGER PRIMARY KEY,
    status  TEXT NOT NULL UNIQUE,
    count   BIGINT NOT NULL
);
INSERT INTO backup_tally (status, count) SELECT status, count(*) FROM backup GROUP BY status;
-- Webhook events per kind and outcome, from this version on. Every webhook adds
-- one, so each process adds to a shard of its own (its pid modulo 16): on
-- PostgreSQL concurrent webhooks would otherwise all wait on one row.
CREATE TABLE webhook_tally (
    id       INTEGER PRIMARY KEY,
    kind     TEXT NOT NULL,
    outcome  TEXT NOT NULL,
    shard    INTEGER NOT NULL,
    count    BIGINT NOT NULL,
    UNIQUE (kind, outcome, shard)
);
-- When a restore drill last proved one of a job's backups, read per job by /metrics.
CREATE INDEX execution_job_proven ON execution (job_id, proven_restorable_at)
    WHERE proven_restorable_at IS NOT NULL;

-- version 11

-- Idempotency-Key on POST /api/jobs (issue 17): the job the first call with this
-- key created, per API key, and the SHA-256 of that call's body (the same key
-- with another body is refused). Written in the job's transaction; it matches
-- for 24 hours and the worker purges it after, as idempotency_key.
CREATE TABLE job_creation_key (
    id              INTEGER PRIMARY KEY,
    api_key_id      TEXT NOT NULL REFERENCES api_key (id) ON DELETE CASCADE,
    key             TEXT NOT NULL,
    request_sha256  TEXT NOT NULL,
    job_id          TEXT NOT NULL REFERENCES job (id) ON DELETE CASCADE,
    created_at      BIGINT NOT NULL,
    UNIQUE (api_key_id, key)
);

CREATE INDEX job_creation_key_created ON job_creation_key (created_at);
CREATE INDEX job_creation_key_job ON job_creation_key (job_id);

-- version 12

-- A dashboard sign-in (issue 17): the cookie holds a random secret, this row
-- only its SHA-256. The session lives as long as the key it was opened with:
-- every request joins the key row and requires the same key_hash, so that
-- disabling, rotating or deleting the key ends its sessions at once.
CREATE TABLE dashboard_session (
    id            TEXT PRIMARY KEY,
    api_key_id    TEXT NOT NULL REFERENCES api_key (id) ON DELETE CASCADE,
    key_hash      TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    last_seen_at  BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL
);
CREATE INDEX dashboard_session_key ON dashboard_session (api_key_id);
CREATE INDEX dashboard_session_expires ON dashboard_session (expires_at);
