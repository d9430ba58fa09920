"""Restore targets for database servers: PostgreSQL (`PostgresqlTarget`) and MariaDB/MySQL (`MysqlTarget`).

Each target has the interface of targets.py: `prepare()` refuses before
anything is written, `restore(stream)` loads the decompressed dump,
`check()` counts what it restored. They connect as the dumps do
(sources.postgresql_uri and postgresql_environment, sources.mysql_connection):
the password travels in the environment or a private file, never in argv.

PostgreSQL restores in one transaction: with `replace`, a prelude that drops
every non-system schema runs in the same transaction as the dump, so a
failure leaves the old database whole. MariaDB has no transactional DDL, so
the dump goes into a staging database first and its tables are swapped in by
one atomic RENAME TABLE; a failure before the swap drops only the staging
database. Both also name the databases they create after the execution
(`scratch_database_name`), so a reclaim can find and drop what a dead worker
left (`remove_abandoned_databases`).
"""
import itertools
import re
import shutil
import subprocess
import threading
from dataclasses import replace as with_fields

from sources import CHUNK, BackupError, mysql_connection, postgresql_environment, postgresql_uri
from tools import kill_group, start_tool, wait_for_tool

SHOWN_OBJECTS = 5  # objects named in a refusal; the rest are counted


def scratch_database_name(purpose, execution):
    """The database an execution's attempt creates for itself: `backhook_<purpose>_<execution id>_<attempt>`.

    Execution ids are lower-case hex, so the name is a plain identifier on
    both servers, within their 63- and 64-character limits. The attempt in
    it keeps a reclaim that drops a dead attempt's database off the next's.
    """
    return f"backhook_{purpose}_{execution.id}_{execution.attempts}"


def chunks_of(stream):
    return iter(lambda: stream.read(CHUNK), b"")


def feed(run, argv, env, chunks, stdout=subprocess.DEVNULL):
    """Start a client tool and write `chunks` into its stdin; returns what it printed when `stdout` is PIPE.

    On any failure the tool is killed *before* its stdin closes: psql and
    mariadb take an end of input for the end of the dump and would commit
    what they had read.
    """
    child = run.spawn(argv, env=env, stdin=subprocess.PIPE, stdout=stdout)
    output = []
    reader = None
    if child.stdout is not None:
        reader = threading.Thread(target=lambda: output.append(child.stdout.read()), daemon=True)
        reader.start()
    try:
        for chunk in chunks:
            run.check()
            child.stdin.write(chunk)
    except BrokenPipeError:
        pass  # the tool stopped reading: its exit status and stderr say why
    except BaseException:
        kill_group(child)
        raise
    finally:
        try:
            child.stdin.close()
        except BrokenPipeError:
            pass
    if reader is not None:
        reader.join()
    run.wait_tool(child)
    return b"".join(output)


def run_cleanup(argv, env):
    """Run a short cleanup command even after a cancel (run.spawn refuses then); never raises.

    Returns the error, or None.
    """
    try:
        child = start_tool(argv, env)
    except BackupError as exc:
        return str(exc)
    child.stdout.close()
    status, stderr = wait_for_tool(child)
    return None if status == 0 else stderr or f"exit status {status}"


# --- PostgreSQL --------------------------------------------------------------------------

NON_SYSTEM_SCHEMA = ("{n} NOT IN ('pg_catalog', 'information_schema') AND {n} NOT LIKE 'pg\\_toast%' "
                     "AND {n} NOT LIKE 'pg\\_temp\\_%'")
IN_USER_SCHEMA = NON_SYSTEM_SCHEMA.format(n="n.nspname")

# Empty means: no schema but `public`, nothing in any non-system schema (relations, functions, types
# that are not a table's row type or an array), no extension but plpgsql, no large object.
PG_USER_OBJECTS = f"""
SELECT 'schema ' || n.nspname FROM pg_catalog.pg_namespace n WHERE {IN_USER_SCHEMA} AND n.nspname <> 'public'
UNION ALL SELECT 'relation ' || n.nspname || '.' || c.relname FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE {IN_USER_SCHEMA}
UNION ALL SELECT 'function ' || n.nspname || '.' || p.proname FROM pg_catalog.pg_proc p
    JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace WHERE {IN_USER_SCHEMA}
UNION ALL SELECT 'type ' || n.nspname || '.' || t.typname FROM pg_catalog.pg_type t
    JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace WHERE {IN_USER_SCHEMA} AND t.typrelid = 0
    AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_type e WHERE e.typarray = t.oid)
UNION ALL SELECT 'extension ' || extname FROM pg_catalog.pg_extension WHERE extname <> 'plpgsql'
UNION ALL SELECT 'large object ' || oid FROM pg_catalog.pg_largeobject_metadata;
"""

# Fed before the dump in the dump's own transaction (psql --single-transaction). pg_dump's plain
# output never creates `public` (it treats it as pre-existing), so the prelude recreates it the
# way initdb leaves it: owned by the database owner from PostgreSQL 15 on, writable by all before.
PG_REPLACE_PRELUDE = f"""
SELECT pg_catalog.format('DROP SCHEMA %I CASCADE', n.nspname) FROM pg_catalog.pg_namespace n
    WHERE {IN_USER_SCHEMA} \\gexec
SELECT pg_catalog.format('DROP PUBLICATION %I', pubname) FROM pg_catalog.pg_publication \\gexec
SELECT pg_catalog.format('DROP EVENT TRIGGER %I', evtname) FROM pg_catalog.pg_event_trigger \\gexec
SELECT pg_catalog.lo_unlink(oid) FROM pg_catalog.pg_largeobject_metadata;
CREATE SCHEMA public;
SELECT pg_catalog.current_setting('server_version_num')::int >= 150000 AS backhook_public_owned_by_db_owner \\gset
\\if :backhook_public_owned_by_db_owner
ALTER SCHEMA public OWNER TO pg_database_owner;
GRANT USAGE ON SCHEMA public TO PUBLIC;
\\else
GRANT ALL ON SCHEMA public TO PUBLIC;
\\endif
COMMENT ON SCHEMA public IS 'standard public schema';
""".encode()

PG_TABLES = f"""
SELECT n.nspname, c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND {IN_USER_SCHEMA} ORDER BY 1, 2;
"""


def pg_identifier(name):
    return '"' + name.replace('"', '""') + '"'


class PostgresqlTarget:
    """A PostgreSQL database, restored by psql in one transaction."""
    kind = "postgresql"

    def __init__(self, source, replace, run):
        self.source, self.replace, self.run = source, replace, run

    def psql(self, chunks, *options, stdout=subprocess.DEVNULL, database=None):
        source = self.source if database is None else with_fields(self.source, database=database)
        with postgresql_environment(source) as env:
            return feed(self.run, ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "--no-password", *options,
                                   f"--dbname={postgresql_uri(source)}", "--file=-"], env, chunks, stdout)

    def query(self, sql, columns):
        """The rows of `sql`, as tuples of strings; NUL-separated, so names may hold any character."""
        output = self.psql([sql.encode()], "--no-align", "--tuples-only", "--field-separator-zero",
                           "--record-separator-zero", stdout=subprocess.PIPE)
        fields = output.decode().split("\0")[:-1] if output else []
        return [tuple(fields[at:at + columns]) for at in range(0, len(fields), columns)]

    def prepare(self):
        objects = [row[0] for row in self.query(PG_USER_OBJECTS, 1)]
        if objects and not self.replace:
            raise BackupError(f"PostgreSQL database {self.source.database} is not empty ({describe(objects)}); "
                              "restore into an empty database, or set replace to drop what is there")
        if objects:
            self.run.log(f"replace: the restore drops {describe(objects)} in the same transaction", "warning")

    def restore(self, stream):
        prelude = [PG_REPLACE_PRELUDE] if self.replace else []
        self.psql(itertools.chain(prelude, chunks_of(stream)), "--single-transaction")

    def check(self):
        tables = self.query(PG_TABLES, 2)
        if not tables:
            return {"tables": {}}
        counts = " UNION ALL ".join(f"SELECT {index}, count(*) FROM {pg_identifier(schema)}.{pg_identifier(name)}"
                                    for index, (schema, name) in enumerate(tables))
        rows = dict(self.query(f"SELECT * FROM ({counts}) AS counts ORDER BY 1;", 2))
        return {"tables": {f"{schema}.{name}": int(rows[str(index)]) for index, (schema, name) in enumerate(tables)}}

    # --- throwaway databases on the same server (drills.py)

    def create_database(self, name):
        """Create an empty database `name` on this target's server, like the target's own."""
        self.psql([f"""
SELECT pg_catalog.format('CREATE DATABASE %I TEMPLATE template0 ENCODING %L LC_COLLATE %L LC_CTYPE %L',
    {pg_literal(name)}, pg_catalog.pg_encoding_to_char(encoding), datcollate, datctype)
FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database() \\gexec
""".encode()])
        return with_fields(self.source, database=name)

    def drop_database(self, name):
        """Drop `name` if it exists, also after a cancel; returns the error, or None."""
        with postgresql_environment(self.source) as env:
            return run_cleanup(["psql", "-X", "-q", "--no-password", "-v", "ON_ERROR_STOP=1",
                                f"--dbname={postgresql_uri(self.source)}",
                                f"--command=DROP DATABASE IF EXISTS {pg_identifier(name)} WITH (FORCE)"], env)


def pg_literal(text):
    return "'" + text.replace("'", "''") + "'"  # standard_conforming_strings is on (psql -X, PostgreSQL ≥ 9.1)


def describe(objects):
    shown = ", ".join(objects[:SHOWN_OBJECTS])
    more = len(objects) - SHOWN_OBJECTS
    return shown + (f" and {more} more" if more > 0 else "")


# --- MariaDB / MySQL --------------------------------------------------------------------

def my_identifier(name):
    return "`" + name.replace("`", "``") + "`"


def my_literal(text):
    """A string literal whatever the sql_mode (NO_BACKSLASH_ESCAPES or not): hex with a charset."""
    return f"_utf8mb4 X'{text.encode().hex()}'"


def my_objects_sql(database):
    schema = my_literal(database)
    return f"""
SELECT IF(TABLE_TYPE = 'VIEW', 'view', 'table'), TABLE_NAME FROM information_schema.TABLES
    WHERE TABLE_SCHEMA = {schema}
UNION ALL SELECT LOWER(ROUTINE_TYPE), ROUTINE_NAME FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = {schema}
UNION ALL SELECT 'event', EVENT_NAME FROM information_schema.EVENTS WHERE EVENT_SCHEMA = {schema}
UNION ALL SELECT 'trigger', TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = {schema};
"""


BATCH_ESCAPES = re.compile(r"\\(.)")
BATCH_CHARACTERS = {"n": "\n", "t": "\t", "0": "\0", "\\": "\\"}


def batch_rows(output):
    """The rows of `mariadb --batch --skip-column-names` output, its escapes undone."""
    return [tuple(BATCH_ESCAPES.sub(lambda match: BATCH_CHARACTERS.get(match[1], match[1]), field)
                  for field in line.split("\t"))
            for line in output.decode().split("\n") if line]


class MysqlTarget:
    """A MariaDB or MySQL database, loaded into a staging database and swapped in by RENAME TABLE."""
    kind = "mysql"

    def __init__(self, source, replace, run):
        self.source, self.replace, self.run = source, replace, run
        self.client = "mariadb" if shutil.which("mariadb") else "mysql"
        self.dumper = "mariadb-dump" if shutil.which("mariadb-dump") else "mysqldump"

    def tool(self, tool, chunks, *options, stdout=subprocess.DEVNULL):
        connection, env = mysql_connection(self.source)
        return feed(self.run, [tool, *connection, *options], env, chunks, stdout)

    def query(self, sql, database=None):
        output = self.tool(self.client, [sql.encode()], "--batch", "--skip-column-names",
                           *([f"--database={database}"] if database else []), stdout=subprocess.PIPE)
        return batch_rows(output)

    def execute(self, sql, database=None):
        self.tool(self.client, [sql.encode()], *([f"--database={database}"] if database else []))

    def objects(self, database):
        """{"table": [...], "view": [...], "procedure": [...], "function": [...], "event": [...], "trigger": [...]}"""
        found = {kind: [] for kind in ("table", "view", "procedure", "function", "event", "trigger")}
        for kind, name in self.query(my_objects_sql(database)):
            found[kind].append(name)
        return found

    def database_defaults(self, database):
        rows = self.query(f"SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA "
                          f"WHERE SCHEMA_NAME = {my_literal(database)};")
        return rows[0] if rows else None

    def prepare(self):
        database = self.source.database
        if self.database_defaults(database) is None:
            raise BackupError(f"MariaDB database {database} does not exist on {self.source.host}; "
                              "create it first (a restore never creates its target)")
        objects = [f"{kind} {name}" for kind, names in self.objects(database).items() for name in names]
        if objects and not self.replace:
            raise BackupError(f"MariaDB database {database} is not empty ({describe(objects)}); "
                              "restore into an empty database, or set replace to drop what is there")
        if objects:
            self.run.log(f"replace: {describe(objects)} are dropped once the restored tables are swapped in",
                         "warning")

    def restore(self, stream):
        staging = scratch_database_name("restore", self.run.execution)
        self.create_database(staging)
        try:
            self.run.log(f"loading the dump into the staging database {staging}")
            self.tool(self.client, chunks_of(stream), f"--database={staging}")
            self.swap_in(staging)
        finally:
            problem = self.drop_database(staging)
            if problem:
                self.run.log(f"the staging database {staging} was not dropped: {problem}", "warning")

    def swap_in(self, staging):
        """Move the staging database's tables into the target in one RENAME TABLE, then its other objects.

        Views cannot move between databases and a table with triggers cannot
        either, so their definitions are dumped from the staging database
        first and re-created in the target after the swap. The old tables and
        views move aside under hidden names in the same RENAME, and are
        dropped only after it.
        """
        target = self.source.database
        new, old = self.objects(staging), self.objects(target)
        definitions = self.definitions(staging, new)
        if new["trigger"]:
            self.execute("".join(f"DROP TRIGGER {my_identifier(name)};" for name in new["trigger"]), staging)
        taken = set(new["table"]) | set(old["table"]) | set(old["view"])
        hidden = (name for name in (f"#backhook-old-{index}" for index in itertools.count()) if name not in taken)
        aside = [(name, next(hidden)) for name in old["table"] + old["view"]]
        moves = [f"{my_identifier(target)}.{my_identifier(name)} TO {my_identifier(target)}.{my_identifier(away)}"
                 for name, away in aside]
        moves += [f"{my_identifier(staging)}.{my_identifier(name)} TO {my_identifier(target)}.{my_identifier(name)}"
                  for name in new["table"]]
        if moves:
            self.execute(f"RENAME TABLE {', '.join(moves)};")
        self.run.log(f"swapped {len(new['table'])} restored table(s) into {target}")
        old_views = {away for name, away in aside if name in old["view"]}
        drops = ["SET FOREIGN_KEY_CHECKS = 0;"]
        drops += [f"DROP VIEW IF EXISTS {my_identifier(away)};" for away in sorted(old_views)]
        drops += [f"DROP TABLE IF EXISTS {my_identifier(away)};" for name, away in aside if away not in old_views]
        drops += [f"DROP {kind.upper()} IF EXISTS {my_identifier(name)};"
                  for kind in ("procedure", "function", "event") for name in old[kind]]
        drops.append("SET FOREIGN_KEY_CHECKS = 1;\n")
        self.tool(self.client, [" ".join(drops).encode(), *definitions], f"--database={target}")

    def definitions(self, staging, new):
        """The staging database's views, triggers, routines and events as SQL, by mariadb-dump."""
        dumped = []
        if new["view"]:
            dumped.append(self.tool(self.dumper, [], "--no-data", "--skip-triggers", "--no-create-db", "--",
                                    staging, *new["view"], stdout=subprocess.PIPE))
        if new["trigger"] or new["procedure"] or new["function"] or new["event"]:
            dumped.append(self.tool(self.dumper, [], "--no-create-info", "--no-data", "--no-create-db", "--skip-opt",
                                    "--triggers", "--routines", "--events", "--", staging, stdout=subprocess.PIPE))
        return dumped

    def check(self):
        tables = self.objects(self.source.database)["table"]
        if not tables:
            return {"tables": {}}
        counts = " UNION ALL ".join(f"SELECT {index}, COUNT(*) FROM {my_identifier(name)}"
                                    for index, name in enumerate(tables))
        rows = dict(self.query(f"{counts};", self.source.database))
        return {"tables": {name: int(rows[str(index)]) for index, name in enumerate(tables)}}

    # --- databases of one execution's own (staging here, drills in drills.py)

    def create_database(self, name, like=None):
        """Create an empty database `name`, with the defaults of `like` (the target's by default)."""
        defaults = self.database_defaults(like or self.source.database)
        options = f" CHARACTER SET {defaults[0]} COLLATE {defaults[1]}" if defaults else ""
        self.execute(f"CREATE DATABASE {my_identifier(name)}{options};")
        return with_fields(self.source, database=name)

    def drop_database(self, name):
        """Drop `name` if it exists, also after a cancel; returns the error, or None."""
        connection, env = mysql_connection(self.source)
        return run_cleanup([self.client, *connection, f"--execute=DROP DATABASE IF EXISTS {my_identifier(name)}"],
                           env)
