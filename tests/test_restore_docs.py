"""docs/restore.md's stock-tool commands, and each manifest's `restore`, restore real backups exactly.

Each fenced block of docs/restore.md marked `<!-- restore: KIND -->` is run with
bash, as the page says, with only its documented placeholders set (ARTIFACT,
SHA256, TARGET), against an artifact a real backhook backup made; the restored
data is compared with the source. A manifest's `restore` lines are run as they
are, in the artifact's directory, with only TARGET set.
"""
import json
import os
import re
import sqlite3
import stat
import subprocess
from pathlib import Path

import psycopg2
import pytest

import manifest
from sinks import manifest_location
from sources import DUMPERS
from statuses import ExecutionStatus
from support import PROJECT, age_keys, run_in_process, scratch_postgres_database

DOCS = PROJECT / "docs" / "restore.md"
BLOCK = re.compile(r"<!-- (restore|decompress|decrypt): (\w+) -->\n```sh\n(.*?)\n```", re.S)
PG_ENV = {"PGHOST": "127.0.0.1", "PGPORT": "5432", "PGUSER": "postgres"}


def documented_blocks():
    return {(role, name): text for role, name, text in BLOCK.findall(DOCS.read_text())}


def documented_commands(kind, compression, encrypted=False):
    """The page's block for `kind`, with its zstd line replaced by the page's line for `compression`
    (its age line, for an encrypted artifact)."""
    blocks = documented_blocks()
    zstd, other = blocks[("decompress", "zstd")], blocks[("decrypt" if encrypted else "decompress", compression)]
    assert zstd in blocks[("restore", kind)]
    return blocks[("restore", kind)].replace(zstd, other)


def run_bash(script, cwd=None, **env):
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120)


def restore(how, execution, target, **env):
    """Restore the backup `execution` into `target`, by the page's block or by its manifest's lines."""
    document = json.loads(Path(manifest_location(execution.path)).read_text())
    if how == "docs":
        script = documented_commands(document["sourceKind"], document["compression"],
                                     encrypted=bool(document["encryption"]))
        result = run_bash(script, ARTIFACT=execution.path, SHA256=execution.sha256, TARGET=str(target), **env)
    else:
        result = run_bash("\n".join(document["restore"]), cwd=Path(execution.path).parent, TARGET=str(target),
                          **env)
    assert result.returncode == 0, result.stderr
    return result


def backed_up(make_job, name, source, compression, **fields):
    execution = run_in_process(make_job(name=name, source=source, compression=compression, **fields))
    assert execution.status == ExecutionStatus.SUCCESS, execution.error
    return execution


# --- the page itself -------------------------------------------------------------------

def test_the_page_has_a_block_for_every_kind_backhook_dumps_and_every_compression():
    blocks = documented_blocks()
    assert {name for role, name in blocks if role == "restore"} == set(DUMPERS) == set(manifest.RESTORE)
    assert {name for role, name in blocks if role == "decompress"} == set(manifest.DECOMPRESS)
    assert {name for role, name in blocks if role == "decrypt"} == set(manifest.DECOMPRESS)


@pytest.mark.parametrize("compression", sorted(manifest.DECOMPRESS))
@pytest.mark.parametrize("kind", sorted(manifest.RESTORE))
def test_the_manifests_commands_are_the_pages_text(kind, compression):
    assert "\n".join(manifest.restore_commands(kind, compression)) == documented_commands(kind, compression)


@pytest.mark.parametrize("compression", sorted(manifest.DECOMPRESS))
@pytest.mark.parametrize("kind", sorted(manifest.RESTORE))
def test_an_encrypted_manifests_commands_are_the_pages_age_text_after_the_identity_line(kind, compression):
    lines = manifest.restore_commands(kind, compression, encrypted=True)
    assert lines[0] == manifest.IDENTITY_LINE
    assert "\n".join(lines[1:]) == documented_commands(kind, compression, encrypted=True)


def test_a_corrupted_artifact_fails_the_checksum_before_anything_is_written(make_job, tmp_path):
    execution = backed_up(make_job, "corrupt", "command:echo precious", "zstd")
    with open(execution.path, "r+b") as stream:
        stream.seek(-1, os.SEEK_END)
        stream.write(b"\x00")
    target = tmp_path / "restored.out"
    result = run_bash(documented_commands("command", "zstd"), ARTIFACT=execution.path, SHA256=execution.sha256,
                      TARGET=str(target))
    assert result.returncode != 0 and "FAILED" in result.stdout
    assert not target.exists()


# --- sqlite ---------------------------------------------------------------------------

def make_sqlite(path):
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=wal")
        db.execute("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT, blob BLOB)")
        db.execute("CREATE TABLE note (body TEXT NOT NULL, at REAL)")
        db.executemany("INSERT INTO item (name, blob) VALUES (?, randomblob(300))",
                       [(f"item {i} ☃",) for i in range(500)])
        db.executemany("INSERT INTO note VALUES (?, ?)", [(f"note {i}\n'quoted'", i / 3) for i in range(50)])
    db.close()
    return path


def sqlite_rows(path):
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        rows = {table: db.execute(f'SELECT * FROM "{table}" ORDER BY rowid').fetchall() for table in tables}
    db.close()
    return rows


@pytest.mark.parametrize("how", ["docs", "manifest"])
@pytest.mark.parametrize("compression", ["zstd", "gzip", "none"])
def test_a_sqlite_backup_restores_over_the_old_database_which_is_kept(make_job, tmp_path, compression, how):
    source = make_sqlite(tmp_path / "app.db")
    execution = backed_up(make_job, "app-db", f"sqlite://{source}", compression)
    target = tmp_path / "restored" / "app.db"
    target.parent.mkdir()
    with sqlite3.connect(target) as old:
        old.execute("CREATE TABLE stale (x)")
    old.close()
    (target.parent / "app.db-wal").write_bytes(b"a stale write-ahead log")

    restore(how, execution, target)
    assert sqlite_rows(target) == sqlite_rows(source)
    kept = {path.name.split(".before-restore-")[0]: path for path in target.parent.iterdir()
            if ".before-restore-" in path.name}
    assert set(kept) == {"app.db", "app.db-wal"}
    assert kept["app.db-wal"].read_bytes() == b"a stale write-ahead log"


# --- postgresql -----------------------------------------------------------------------

@pytest.fixture
def pg_source(postgres_url):
    with scratch_postgres_database() as url:
        with psycopg2.connect(url) as db, db.cursor() as cursor:
            cursor.execute("CREATE TABLE item (id serial PRIMARY KEY, name text, price numeric(10, 2), "
                           "data bytea, seen timestamptz)")
            cursor.execute("CREATE TABLE tag (item_id int REFERENCES item (id), label text)")
            cursor.execute("INSERT INTO item (name, price, data, seen) SELECT 'item ' || i || ' ☃', i * 1.25, "
                           "sha256(i::text::bytea), '2026-12-03 03:00+00'::timestamptz + i * interval '1 minute' "
                           "FROM generate_series(1, 300) AS i")
            cursor.execute("INSERT INTO tag SELECT id, 'label ' || (id % 7) FROM item")
        db.close()
        yield url


def pg_rows(url):
    with psycopg2.connect(url) as db, db.cursor() as cursor:
        cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")
        tables = [row[0] for row in cursor.fetchall()]
        rows = {}
        for table in tables:
            cursor.execute(f'SELECT * FROM "{table}" ORDER BY 1')
            rows[table] = [tuple(bytes(value) if isinstance(value, memoryview) else value for value in row)
                           for row in cursor.fetchall()]
        cursor.execute("SELECT sequencename, last_value FROM pg_sequences WHERE schemaname = 'public'")
        rows["sequences"] = sorted(cursor.fetchall())
    db.close()
    return rows


@pytest.mark.parametrize("how", ["docs", "manifest"])
def test_a_postgresql_backup_restores_into_a_new_database_with_psql(make_job, pg_source, how):
    execution = backed_up(make_job, "pg", pg_source, "zstd")
    with scratch_postgres_database() as placeholder:
        target = placeholder.rsplit("/", 1)[1]
        admin = psycopg2.connect(placeholder.rsplit("/", 1)[0] + "/postgres")
        admin.autocommit = True
        admin.cursor().execute(f'DROP DATABASE "{target}"')  # the page creates it; dropped again on exit
        admin.close()
        restore(how, execution, target, **PG_ENV)
        assert pg_rows(placeholder) == pg_rows(pg_source)
        assert pg_rows(pg_source)["item"]  # rows were compared, not two empty databases


def test_the_postgresql_block_refuses_a_database_that_exists(make_job, pg_source):
    execution = backed_up(make_job, "pg-existing", pg_source, "zstd")
    with scratch_postgres_database() as existing:
        with psycopg2.connect(existing) as db, db.cursor() as cursor:
            cursor.execute("CREATE TABLE mine (x int)")
            cursor.execute("INSERT INTO mine VALUES (1)")
        db.close()
        result = run_bash(documented_commands("postgresql", "zstd"), ARTIFACT=execution.path,
                          SHA256=execution.sha256, TARGET=existing.rsplit("/", 1)[1], **PG_ENV)
        assert result.returncode != 0 and "already exists" in result.stderr
        assert pg_rows(existing) == {"mine": [(1,)], "sequences": []}


# --- mysql ----------------------------------------------------------------------------

def mariadb(home, sql, database=None):
    argv = ["mariadb", "--batch", "--skip-column-names", *([f"--database={database}"] if database else []),
            "-e", sql]
    return subprocess.run(argv, env={**os.environ, "HOME": str(home)}, capture_output=True, check=True).stdout


@pytest.fixture
def my_cnf(tmp_path):
    """A home whose ~/.my.cnf says where the server is, as a sysadmin's would."""
    home = tmp_path / "home"
    home.mkdir()
    (home / ".my.cnf").write_text("[client]\nhost=127.0.0.1\nport=3306\nuser=root\n")
    return home


@pytest.fixture
def mysql_names(mysql_url, my_cnf):
    """Unique database names on the shared server; each is dropped afterwards."""
    names = []

    def make():
        names.append(f"bh_{os.urandom(6).hex()}")
        return names[-1]

    yield make
    for name in names:
        mariadb(my_cnf, f"DROP DATABASE IF EXISTS `{name}`")


def mysql_rows(home, database):
    tables = mariadb(home, "SHOW TABLES", database).decode().split()
    return {table: mariadb(home, f"SELECT * FROM `{table}` ORDER BY 1, 2", database) for table in tables}


@pytest.mark.parametrize("how", ["docs", "manifest"])
def test_a_mysql_backup_restores_into_a_new_database_with_mariadb(make_job, my_cnf, mysql_names, how):
    source = mysql_names()
    mariadb(my_cnf, f"CREATE DATABASE `{source}`")
    mariadb(my_cnf, "CREATE TABLE item (id INT PRIMARY KEY AUTO_INCREMENT, name VARCHAR(100), data BLOB, "
                    "price DECIMAL(10,2)) CHARACTER SET utf8mb4;"
                    "CREATE TABLE tag (item_id INT, label TEXT, FOREIGN KEY (item_id) REFERENCES item (id));"
                    "INSERT INTO item (name, data, price) SELECT CONCAT('item ', seq, ' ☃'), UNHEX(SHA2(seq, 256)), "
                    "seq * 1.25 FROM seq_1_to_300;"
                    "INSERT INTO tag SELECT id, CONCAT('label ', id % 7) FROM item;", source)
    execution = backed_up(make_job, "maria", f"mysql://root@127.0.0.1:3306/{source}", "zstd")
    target = mysql_names()
    restore(how, execution, target, HOME=str(my_cnf))
    restored, original = mysql_rows(my_cnf, target), mysql_rows(my_cnf, source)
    assert restored == original and set(original) == {"item", "tag"} and original["item"].count(b"\n") == 300


# --- files ----------------------------------------------------------------------------

def make_tree(root):
    root.mkdir()
    (root / "etc").mkdir(mode=0o750)
    (root / "etc" / "app.conf").write_text("listen = 8080\n")
    os.chmod(root / "etc" / "app.conf", 0o640)
    (root / "bin").mkdir()
    (root / "bin" / "run").write_text("#!/bin/sh\necho run\n")
    os.chmod(root / "bin" / "run", 0o755)
    (root / "secret.key").write_bytes(os.urandom(300))
    os.chmod(root / "secret.key", 0o600)
    (root / "empty").mkdir()
    (root / "link").symlink_to("etc/app.conf")
    (root / "naïve name with spaces.txt").write_text("☃\n")
    try:
        os.setxattr(root / "etc" / "app.conf", "user.backhook.origin", "config ☃".encode())
    except OSError:
        pass  # a file system without user.* attributes: the rest is still compared
    if os.geteuid() == 0:  # owners are restored only by root, and by number
        os.chown(root / "etc" / "app.conf", 4321, 4322)
        os.chown(root / "bin", 4323, 4323)
    os.chmod(root, 0o751)
    return root


def tree(root):
    """Every entry under `root` (itself included): type, mode, owner, extended attributes, content or link target."""
    entries = {}
    for path in [root, *sorted(root.rglob("*"))]:
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            content = os.readlink(path)
        elif stat.S_ISREG(info.st_mode):
            content = path.read_bytes()
        else:
            content = None
        attributes = {} if stat.S_ISLNK(info.st_mode) else {
            name: os.getxattr(path, name) for name in os.listxattr(path)}
        entries[str(path.relative_to(root))] = (stat.S_IFMT(info.st_mode), stat.S_IMODE(info.st_mode),
                                                info.st_uid, info.st_gid, attributes, content)
    return entries


@pytest.mark.parametrize("how, compression", [("docs", "zstd"), ("manifest", "zstd"), ("docs", "gzip"),
                                              ("manifest", "none")])
def test_a_directory_backup_restores_with_modes_owners_and_contents(make_job, tmp_path, how, compression):
    source = make_tree(tmp_path / "site")
    execution = backed_up(make_job, "site", f"files://{source}", compression)
    target = tmp_path / "restored"
    restore(how, execution, target)
    assert tree(target) == tree(source)


def test_the_directory_block_refuses_a_directory_that_is_not_empty(make_job, tmp_path):
    source = make_tree(tmp_path / "site")
    execution = backed_up(make_job, "site-again", f"files://{source}", "zstd")
    target = tmp_path / "busy"
    target.mkdir()
    (target / "app.conf").write_text("newer than the backup\n")
    result = run_bash(documented_commands("files", "zstd"), ARTIFACT=execution.path, SHA256=execution.sha256,
                      TARGET=str(target))
    assert result.returncode != 0
    assert [path.name for path in target.iterdir()] == ["app.conf"]
    assert (target / "app.conf").read_text() == "newer than the backup\n"


# --- command --------------------------------------------------------------------------

COMMAND = r"printf 'first line\nbinary \000\377 end'; seq 1 2000"


@pytest.mark.parametrize("how", ["docs", "manifest"])
def test_a_command_backup_restores_its_output_byte_for_byte(make_job, tmp_path, how):
    execution = backed_up(make_job, "output", f"command:{COMMAND}", "zstd")
    target = tmp_path / "restored.out"
    restore(how, execution, target)
    expected = subprocess.run(["bash", "-c", COMMAND], capture_output=True, check=True).stdout
    assert target.read_bytes() == expected and b"\x00\xff" in expected


def test_the_command_block_never_overwrites_an_existing_file(make_job, tmp_path):
    execution = backed_up(make_job, "output-again", f"command:{COMMAND}", "zstd")
    target = tmp_path / "precious.out"
    target.write_bytes(b"do not lose me")
    result = run_bash(documented_commands("command", "zstd"), ARTIFACT=execution.path, SHA256=execution.sha256,
                      TARGET=str(target))
    assert result.returncode != 0 and target.read_bytes() == b"do not lose me"


# --- encrypted artifacts --------------------------------------------------------------

@pytest.mark.sqlite_only("the metadata backend plays no part in decrypting an artifact with the stock age")
@pytest.mark.parametrize("how, compression, key", [("docs", "zstd", "age"), ("manifest", "zstd", "ssh"),
                                                   ("docs", "gzip", "ssh"), ("manifest", "none", "age")])
def test_an_encrypted_directory_backup_restores_with_age_and_either_identity(make_job, tmp_path, how,
                                                                             compression, key):
    keys = age_keys(tmp_path)
    source = make_tree(tmp_path / "site")
    execution = backed_up(make_job, "sealed-site", f"files://{source}", compression,
                          recipients=json.dumps([keys["age"][1], keys["ssh"][1]]))
    assert execution.path.endswith(".tar" + {"zstd": ".zst", "gzip": ".gz", "none": ""}[compression] + ".age")
    target = tmp_path / "restored"
    restore(how, execution, target, IDENTITY=str(keys[key][0]))
    assert tree(target) == tree(source)


@pytest.mark.sqlite_only("the metadata backend plays no part in decrypting an artifact with the stock age")
def test_an_encrypted_block_with_a_wrong_identity_writes_nothing(make_job, tmp_path):
    keys, stranger = age_keys(tmp_path), age_keys(tmp_path / "stranger" if (tmp_path / "stranger").mkdir() is None
                                                  else None)
    execution = backed_up(make_job, "sealed-output", f"command:{COMMAND}", "zstd",
                          recipients=json.dumps([keys["age"][1]]))
    target = tmp_path / "restored.out"
    result = run_bash(documented_commands("command", "zstd", encrypted=True), ARTIFACT=execution.path,
                      SHA256=execution.sha256, TARGET=str(target), IDENTITY=str(stranger["age"][0]))
    assert result.returncode != 0 and "no identity matched" in result.stderr
    assert not target.exists() or target.read_bytes() == b""
