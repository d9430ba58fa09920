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

-- version 13

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
