"""PostgreSQL and MariaDB restore targets against the real servers: round trips, refusals, replace, faults."""
import io
import os
import re
import secrets
import subprocess
import tempfile
import types

import pytest

from database_targets import MysqlTarget, PostgresqlTarget, scratch_database_name
from sources import BackupError, dump_mysql, dump_postgresql, parse_source
from support import mariadb, psql, unique_name


class Cancelled(Exception):
    pass


class ToolRun:
    """What a target needs of the Restore run: spawn, wait_tool, check, log, the execution; nothing stored."""

    def __init__(self):
        self.execution = types.SimpleNamespace(id=secrets.token_hex(16), attempts=1)
        self.logs, self.argvs, self.envs, self.children = [], [], [], []
        self.stopped = False

    def log(self, message, level="info"):
        self.logs.append((level, message))

    def check(self):
        if self.stopped:
            raise Cancelled()

    def stop(self):
        self.stopped = True
        for child in self.children:
            if child.poll() is None:
                os.killpg(child.pid, 9)

    def spawn(self, argv, env=None, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE):
        self.check()
        self.argvs.append(argv)
        self.envs.append(env or {})
        stderr = tempfile.TemporaryFile()
        child = subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=stderr, env={**os.environ, **(env or {})},
                                 start_new_session=True)
        child.stderr_file = stderr
        self.children.append(child)
        return child

    def wait_tool(self, child, warning_statuses=()):
        status = child.wait()
        self.check()
        with child.stderr_file as stream:
            stream.seek(0)
            stderr = stream.read().decode(errors="replace").strip()
        if status:
            raise BackupError(f"{os.path.basename(child.args[0])} exited with status {status}: {stderr}")


def dumped(dump, text):
    """The bytes the job's own dumper (sources.py) writes for `text`."""
    out = io.BytesIO()
    dump(text, ToolRun(), out)
    return out.getvalue()


class FailingStream:
    """The dump in small reads, then a fault: bytes appended at its end, or an exception raised halfway."""

    def __init__(self, data, fault):
        self.stream, self.half, self.fault = io.BytesIO(data), len(data) // 2, fault

    def read(self, size):
        if isinstance(self.fault, Exception) and self.stream.tell() >= self.half:
            raise self.fault
        chunk = self.stream.read(min(size, 4096))
        if not chunk and isinstance(self.fault, bytes):
            chunk, self.fault = self.fault, b""
        return chunk


def restored(target_class, text, stream, replace=False, run=None):
    target = target_class(parse_source(text), replace, run or ToolRun())
    target.prepare()
    target.restore(stream)
    return target.check()


# --- PostgreSQL --------------------------------------------------------------------------

PG_URL = "postgresql://postgres@127.0.0.1:5432/{}"

PG_FIXTURE = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE person (id serial PRIMARY KEY, name text NOT NULL, nick text, mood mood, born date,
                     balance numeric(12, 2), tags text[], doc jsonb, photo bytea, seen timestamptz);
CREATE INDEX person_name ON person (lower(name));
INSERT INTO person (name, nick, mood, born, balance, tags, doc, photo, seen) VALUES
    ('Zoë ☃', NULL, 'happy', '1980-02-29', 12.5, '{a,"b c"}', '{"k": [1, null]}', '\\x00ff', '2026-01-01 00:00Z'),
    ('Ivan "q" O''Brien', 'tab	here', NULL, NULL, NULL, NULL, NULL, NULL, NULL),
    ('line
break', '', 'sad', '2000-01-01', -3, '{}', 'null', '', now());
CREATE SCHEMA "Billing Dept";
CREATE TABLE "Billing Dept"."Invoice" (no bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                                       person int REFERENCES person (id), total numeric);
INSERT INTO "Billing Dept"."Invoice" (person, total) SELECT 1 + g % 3, g * 1.5 FROM generate_series(1, 500) g;
CREATE SEQUENCE ticket START 40;
SELECT nextval('ticket');
CREATE VIEW happy AS SELECT id, name FROM person WHERE mood = 'happy';
CREATE FUNCTION shout(text) RETURNS text LANGUAGE sql AS $$ SELECT upper($1) || '!' $$;
"""


def pg_schema_and_data(database):
    """The database as pg_dump sees it, minus the per-run \\restrict key: equal dumps, equal databases."""
    text = subprocess.run(["pg_dump", "--no-owner", f"--dbname={PG_URL.format(database)}"],
                          capture_output=True, check=True, text=True).stdout
    return re.sub(r"^\\(un)?restrict .*$", "", text, flags=re.M)


@pytest.fixture
def pg_source(pg_databases):
    database = pg_databases()
    psql(database, "-c", PG_FIXTURE)
    return database


def test_postgresql_restore_into_an_empty_database_equals_the_backup(pg_source, pg_databases):
    target = pg_databases()
    summary = restored(PostgresqlTarget, PG_URL.format(target),
                       io.BytesIO(dumped(dump_postgresql, PG_URL.format(pg_source))))

    assert pg_schema_and_data(target) == pg_schema_and_data(pg_source)
    assert summary == {"tables": {"Billing Dept.Invoice": 500, "public.person": 3}}
    assert psql(target, "-At", "-c", "SELECT nextval('ticket'), shout(name) FROM happy") == "41|ZOË ☃!\n".encode()


@pytest.mark.parametrize("content", [
    "CREATE TABLE stray (id int)",
    "CREATE SCHEMA empty_but_there",
    "CREATE FUNCTION stray() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "CREATE TYPE stray AS ENUM ('x')",
    "CREATE SEQUENCE stray",
    "SELECT lo_create(0)",
])
def test_postgresql_refuses_a_target_that_is_not_empty_and_changes_nothing(pg_source, pg_databases, content):
    target = pg_databases()
    psql(target, "-c", content)
    before = pg_schema_and_data(target)
    with pytest.raises(BackupError, match=f"PostgreSQL database {target} is not empty .*set replace"):
        PostgresqlTarget(parse_source(PG_URL.format(target)), False, ToolRun()).prepare()
    assert pg_schema_and_data(target) == before


def test_postgresql_a_fresh_database_with_its_public_schema_counts_as_empty(pg_databases):
    PostgresqlTarget(parse_source(PG_URL.format(pg_databases())), False, ToolRun()).prepare()


def test_postgresql_replace_leaves_exactly_the_backup(pg_source, pg_databases):
    target = pg_databases()
    psql(target, "-c", "CREATE TABLE stray (id int); INSERT INTO stray VALUES (1);"
                       "CREATE TABLE person (id int, newer text); INSERT INTO person VALUES (99, 'newer');"
                       "CREATE SCHEMA other; CREATE TABLE other.kept_nowhere (x int); SELECT lo_create(0);")
    summary = restored(PostgresqlTarget, PG_URL.format(target),
                       io.BytesIO(dumped(dump_postgresql, PG_URL.format(pg_source))), replace=True)

    assert pg_schema_and_data(target) == pg_schema_and_data(pg_source)
    assert "stray" not in str(summary) and "other." not in str(summary)
    assert psql(target, "-At", "-c", "SELECT count(*) FROM pg_largeobject_metadata") == b"0\n"


@pytest.mark.parametrize("fault", [b"\nTHIS IS NOT SQL;\n", ValueError("corrupt frame halfway")],
                         ids=["bad statement at the end", "the stream breaks halfway"])
def test_postgresql_a_failing_restore_under_replace_leaves_the_old_data_whole(pg_source, pg_databases, fault):
    target = pg_databases()
    psql(target, "-c", "CREATE TABLE precious (id int); INSERT INTO precious SELECT generate_series(1, 10);")
    before = pg_schema_and_data(target)
    stream = FailingStream(dumped(dump_postgresql, PG_URL.format(pg_source)), fault)
    with pytest.raises((BackupError, ValueError)):
        restored(PostgresqlTarget, PG_URL.format(target), stream, replace=True)
    assert pg_schema_and_data(target) == before


def test_postgresql_a_cancel_mid_restore_leaves_the_old_data_whole(pg_source, pg_databases):
    target, run = pg_databases(), ToolRun()
    psql(target, "-c", "CREATE TABLE precious (id int); INSERT INTO precious VALUES (1);")
    before = pg_schema_and_data(target)
    data = dumped(dump_postgresql, PG_URL.format(pg_source))

    class CancelledHalfway(FailingStream):
        def read(self, size):
            if self.stream.tell() >= self.half:
                run.stop()  # as the worker's thread does: the tool is killed, then the attempt sees it
            return super().read(size)

    with pytest.raises(Cancelled):
        restored(PostgresqlTarget, PG_URL.format(target), CancelledHalfway(data, b""), replace=True, run=run)
    assert pg_schema_and_data(target) == before


@pytest.fixture
def pg_user(pg_databases):
    """A password-protected role owning two fresh databases: (name, password, source, target)."""
    name, password, source, target = unique_name(), f"pw-{secrets.token_hex(8)}", pg_databases(), pg_databases()
    psql("test", "-c", f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
    for database in (source, target):
        psql("test", "-c", f"ALTER DATABASE {database} OWNER TO {name}")
    psql(source, "-c", f"SET ROLE {name}; CREATE TABLE item (id int); INSERT INTO item VALUES (1), (2);")
    yield name, password, source, target
    for database in (source, target):
        psql("test", "-c", f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
    psql("test", "-c", f"DROP ROLE IF EXISTS {name}")


def test_postgresql_credentials_stay_out_of_argv_logs_and_errors(pg_user):
    name, password, source, target = pg_user
    url = f"postgresql://{name}:{password}@127.0.0.1:5432/{{}}"
    dump = dumped(dump_postgresql, url.format(source))
    run = ToolRun()
    assert restored(PostgresqlTarget, url.format(target), io.BytesIO(dump), replace=True, run=run) == {
        "tables": {"public.item": 2}}
    assert password not in str(run.argvs) and password not in str(run.logs)
    assert {"PGPASSWORD": password}.items() <= run.envs[-1].items()

    missing = unique_name()
    with pytest.raises(BackupError) as failure:
        restored(PostgresqlTarget, url.format(missing), io.BytesIO(dump))
    assert missing in str(failure.value) and password not in str(failure.value)


# --- MariaDB -----------------------------------------------------------------------------

MY_URL = "mysql://root@127.0.0.1:3306/{}"

MY_FIXTURE = """
SET NAMES utf8mb4;
CREATE TABLE person (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(100) NOT NULL, nick VARCHAR(20),
                     born DATE, balance DECIMAL(12, 2), doc JSON, photo BLOB, seen DATETIME(3),
                     KEY person_name (name)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
INSERT INTO person (name, nick, born, balance, doc, photo, seen) VALUES
    ('Zoë ☃ 🦆', NULL, '1980-02-29', 12.5, '{"k": [1, null]}', X'00FF', '2026-01-01 00:00:00.123'),
    ('Ivan "q" O''Brien \\\\ back', 'tab\there', NULL, NULL, NULL, NULL, NULL),
    ('line\nbreak', '', '2000-01-01', -3, 'null', '', NOW());
CREATE TABLE `invoice lines` (no BIGINT AUTO_INCREMENT PRIMARY KEY, person INT, total DECIMAL(10, 2),
                              FOREIGN KEY (person) REFERENCES person (id)) ENGINE=InnoDB AUTO_INCREMENT=1000;
INSERT INTO `invoice lines` (person, total) SELECT 1 + seq % 3, seq * 1.5 FROM seq_1_to_500;
CREATE VIEW rich AS SELECT id, name FROM person WHERE balance > 0;
CREATE VIEW rich_names AS SELECT name FROM rich;
CREATE TRIGGER shout BEFORE INSERT ON person FOR EACH ROW SET NEW.nick = UPPER(NEW.nick);
CREATE PROCEDURE touch() UPDATE person SET seen = NOW();
CREATE FUNCTION twice(x INT) RETURNS INT DETERMINISTIC RETURN 2 * x;
"""


def my_schema_and_data(database):
    """The database as mariadb-dump sees it, minus the header naming it: equal dumps, equal databases.

    Events too, though the job's dumper leaves them out (see sources.dump_mysql): a replace drops the target's.
    """
    text = subprocess.run(["mariadb-dump", "-h", "127.0.0.1", "-u", "root", "--routines", "--triggers", "--events",
                           "--skip-dump-date", "--", database], capture_output=True, check=True).stdout
    return b"\n".join(line for line in text.splitlines() if not line.startswith(b"-- "))


def leftover_databases(run):
    return mariadb("-N", "-e", f"SHOW DATABASES LIKE '%{run.execution.id}%'")


@pytest.fixture
def my_source(mysql_databases):
    database = mysql_databases()
    mariadb("-e", MY_FIXTURE, database=database)
    return database


def test_mysql_restore_into_an_empty_database_equals_the_backup(my_source, mysql_databases):
    target, run = mysql_databases(), ToolRun()
    summary = restored(MysqlTarget, MY_URL.format(target), io.BytesIO(dumped(dump_mysql, MY_URL.format(my_source))),
                       run=run)

    assert my_schema_and_data(target) == my_schema_and_data(my_source)
    assert summary == {"tables": {"invoice lines": 500, "person": 3}}
    mariadb("-e", "INSERT INTO person (name, nick) VALUES ('new', 'quiet')", database=target)
    assert mariadb("-N", "-e", "SELECT id, nick, twice(21) FROM person WHERE name = 'new'",
                   database=target) == b"4\tQUIET\t42\n"
    assert leftover_databases(run) == b""


@pytest.mark.parametrize("content", [
    "CREATE TABLE stray (id INT)",
    "CREATE VIEW stray AS SELECT 1 AS one",
    "CREATE PROCEDURE stray() SELECT 1",
    "CREATE EVENT stray ON SCHEDULE EVERY 1 DAY DISABLE DO SELECT 1",
])
def test_mysql_refuses_a_target_that_is_not_empty_and_changes_nothing(mysql_databases, content):
    target = mysql_databases()
    mariadb("-e", content, database=target)
    before = my_schema_and_data(target)
    with pytest.raises(BackupError, match=f"MariaDB database {target} is not empty .*set replace"):
        MysqlTarget(parse_source(MY_URL.format(target)), False, ToolRun()).prepare()
    assert my_schema_and_data(target) == before


def test_mysql_refuses_a_target_that_does_not_exist(mysql_url):
    missing = unique_name()
    with pytest.raises(BackupError, match=f"MariaDB database {missing} does not exist .*create it first"):
        MysqlTarget(parse_source(MY_URL.format(missing)), True, ToolRun()).prepare()


def test_mysql_replace_leaves_exactly_the_backup(my_source, mysql_databases):
    target, run = mysql_databases(), ToolRun()
    mariadb("-e", "CREATE TABLE stray (id INT); INSERT INTO stray VALUES (1);"
                  "CREATE TABLE person (id INT, newer TEXT); INSERT INTO person VALUES (99, 'newer');"
                  "CREATE VIEW `invoice lines` AS SELECT 1 AS one;"  # a view where the backup has a table
                  "CREATE TRIGGER shout BEFORE INSERT ON stray FOR EACH ROW SET NEW.id = 0;"
                  "CREATE PROCEDURE touch() SELECT 'newer';"
                  "CREATE EVENT stray ON SCHEDULE EVERY 1 DAY DISABLE DO SELECT 1;", database=target)
    restored(MysqlTarget, MY_URL.format(target), io.BytesIO(dumped(dump_mysql, MY_URL.format(my_source))),
             replace=True, run=run)

    assert my_schema_and_data(target) == my_schema_and_data(my_source)
    assert leftover_databases(run) == b""


@pytest.mark.parametrize("fault", [b"\nTHIS IS NOT SQL;\n", ValueError("corrupt frame halfway")],
                         ids=["bad statement at the end", "the stream breaks halfway"])
def test_mysql_a_failing_restore_under_replace_leaves_the_old_data_whole(my_source, mysql_databases, fault):
    target, run = mysql_databases(), ToolRun()
    mariadb("-e", "CREATE TABLE person (id INT); INSERT INTO person VALUES (1), (2);", database=target)
    before = my_schema_and_data(target)
    stream = FailingStream(dumped(dump_mysql, MY_URL.format(my_source)), fault)
    with pytest.raises((BackupError, ValueError)):
        restored(MysqlTarget, MY_URL.format(target), stream, replace=True, run=run)
    assert my_schema_and_data(target) == before
    assert leftover_databases(run) == b""


def test_mysql_a_failing_swap_leaves_the_old_data_whole(my_source, mysql_databases, monkeypatch):
    target, run = mysql_databases(), ToolRun()
    mariadb("-e", "CREATE TABLE person (id INT); INSERT INTO person VALUES (1), (2);", database=target)
    before = my_schema_and_data(target)
    execute = MysqlTarget.execute

    def rename_fails(self, sql, database=None):
        if sql.startswith("RENAME TABLE"):
            sql = sql.replace("RENAME TABLE", "RENAME TABLE `no such table` TO `x`,", 1)  # the whole RENAME fails
        return execute(self, sql, database)

    monkeypatch.setattr(MysqlTarget, "execute", rename_fails)
    with pytest.raises(BackupError, match="no such table"):
        restored(MysqlTarget, MY_URL.format(target), io.BytesIO(dumped(dump_mysql, MY_URL.format(my_source))),
                 replace=True, run=run)
    assert my_schema_and_data(target) == before
    assert leftover_databases(run) == b""


def test_mysql_a_cancel_mid_restore_drops_only_the_staging_database(my_source, mysql_databases):
    target, run = mysql_databases(), ToolRun()
    mariadb("-e", "CREATE TABLE person (id INT); INSERT INTO person VALUES (1);", database=target)
    before = my_schema_and_data(target)
    data = dumped(dump_mysql, MY_URL.format(my_source))

    class CancelledHalfway(FailingStream):
        def read(self, size):
            if self.stream.tell() >= self.half:
                run.stop()
            return super().read(size)

    with pytest.raises(Cancelled):
        restored(MysqlTarget, MY_URL.format(target), CancelledHalfway(data, b""), replace=True, run=run)
    assert my_schema_and_data(target) == before
    assert leftover_databases(run) == b""


@pytest.fixture
def my_user(mysql_databases):
    """A password-protected user with rights on two fresh databases and backhook's own: (name, pw, source, target)."""
    name, password, source, target = unique_name(), f"pw-{secrets.token_hex(8)}", mysql_databases(), mysql_databases()
    mariadb("-e", f"CREATE USER '{name}'@'%' IDENTIFIED BY '{password}';"
                  f"GRANT ALL ON `{source}`.* TO '{name}'@'%'; GRANT ALL ON `{target}`.* TO '{name}'@'%';"
                  f"GRANT ALL ON `backhook\\_%`.* TO '{name}'@'%';")
    mariadb("-e", "CREATE TABLE item (id INT PRIMARY KEY); INSERT INTO item VALUES (1), (2);", database=source)
    yield name, password, source, target
    mariadb("-e", f"DROP USER IF EXISTS '{name}'@'%'")


def test_mysql_credentials_stay_out_of_argv_logs_and_errors(my_user):
    name, password, source, target = my_user
    url = f"mysql://{name}:{password}@127.0.0.1:3306/{{}}"
    dump = dumped(dump_mysql, url.format(source))
    run = ToolRun()
    assert restored(MysqlTarget, url.format(target), io.BytesIO(dump), run=run) == {"tables": {"item": 2}}
    assert password not in str(run.argvs) and password not in str(run.logs)
    assert {"MYSQL_PWD": password}.items() <= run.envs[-1].items()

    with pytest.raises(BackupError, match="Access denied") as failure:
        restored(MysqlTarget, f"mysql://{name}:wrong-{password}@127.0.0.1:3306/{target}", io.BytesIO(dump))
    assert password not in str(failure.value)


def test_scratch_database_names_are_plain_identifiers_within_both_limits():
    name = scratch_database_name("restore", types.SimpleNamespace(id="0" * 12 + "f" * 20, attempts=2))
    assert re.fullmatch(r"[a-z0-9_]+", name) and len(name) <= 63 and name.endswith("_2")
