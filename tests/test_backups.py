"""Real backups of every source kind, through the API and a worker, restored with stock tools."""
import contextlib
import ctypes
import hashlib
import os
import random
import re
import secrets
import sqlite3
import subprocess
import sys
from pathlib import Path

import psycopg2
import pytest

from models import Execution, Job, Setting
from sinks import job_directory
from support import mariadb, psql, run_to_end, trigger, unique_name, wait_for_status, wait_until

def decompress(artifact):
    """The artifact's plain bytes, through the stock zstd or gzip tool."""
    artifact = Path(artifact)
    if artifact.suffix == ".zst":
        return subprocess.run(["zstd", "-dc", str(artifact)], check=True, capture_output=True).stdout
    if artifact.suffix == ".gz":
        return subprocess.run(["gzip", "-dc", str(artifact)], check=True, capture_output=True).stdout
    return artifact.read_bytes()


@pytest.fixture
def back_up(client, auth, make_job, start_worker):
    """Back up `source` once, through the API and a real worker; return the final execution."""
    def run(name, source, **fields):
        job = make_job(name=name, source=source, **fields)
        start_worker()
        return run_to_end(client, auth, job.id)

    return run


@contextlib.contextmanager
def meanwhile(script, argument, ready):
    """Another Python process runs `script` through the block, from the moment it prints `ready`."""
    process = subprocess.Popen([sys.executable, "-c", script, str(argument)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == ready
        yield
    finally:
        process.kill()
        process.wait()


def assert_succeeded(data, suffix):
    assert data["status"] == "Success", data["error"]
    assert data["path"].endswith(suffix)
    assert_stored_as_reported(data)


def job_of(data):
    return Job.get_by_id(data["jobId"])


def assert_stored_as_reported(data):
    artifact = Path(data["path"])
    assert re.fullmatch(rf"\d{{8}}T\d{{6}}Z-{data['id']}\.[a-z]+(\.zst|\.gz)?", artifact.name)
    assert artifact.stat().st_size == data["size"]
    assert hashlib.sha256(artifact.read_bytes()).hexdigest() == Execution.get_by_id(data["id"]).sha256
    assert not list(artifact.parent.glob("*.partial"))


# --- sqlite ------------------------------------------------------------------------

def make_sqlite(path, rows):
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=wal")
        db.execute("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT, blob BLOB)")
        db.executemany("INSERT INTO item (name, blob) VALUES (?, randomblob(200))",
                       [(f"item {i} ☃",) for i in range(rows)])
    return path


@pytest.mark.parametrize("compression", ["zstd", "gzip", "none"])
def test_sqlite_backup_restores_with_sqlite3(back_up, tmp_path, compression):
    source = make_sqlite(tmp_path / "app.db", rows=2000)
    data = back_up("app-db", f"sqlite://{source}", compression=compression)
    assert_succeeded(data, {"zstd": ".db.zst", "gzip": ".db.gz", "none": ".db"}[compression])

    restored = tmp_path / "restored.db"
    restored.write_bytes(decompress(data["path"]))
    dump = ["sqlite3", "-readonly"]
    assert (subprocess.run([*dump, str(restored), ".dump item"], capture_output=True, check=True).stdout
            == subprocess.run([*dump, str(source), ".dump item"], capture_output=True, check=True).stdout)


WRITER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
print("writing", flush=True)
while True:
    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT INTO item (name, blob) VALUES ('written during backup', randomblob(4000))")
    db.execute("UPDATE tally SET items = items + 1")
    db.execute("COMMIT")
"""


def test_sqlite_written_during_its_backup_gives_a_consistent_artifact(back_up, tmp_path):
    source = make_sqlite(tmp_path / "busy.db", rows=150_000)
    with sqlite3.connect(source) as db:
        db.execute("CREATE TABLE tally (items INTEGER)")
        db.execute("INSERT INTO tally SELECT count(*) FROM item")
    with meanwhile(WRITER, source, ready="writing"):
        data = back_up("busy-db", f"sqlite://{source}")
    assert_succeeded(data, ".db.zst")

    restored = tmp_path / "restored.db"
    restored.write_bytes(decompress(data["path"]))
    with sqlite3.connect(restored) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        items, tally = db.execute("SELECT (SELECT count(*) FROM item), (SELECT items FROM tally)").fetchone()
    assert items == tally  # each writer transaction is either wholly in the snapshot or not at all
    assert items > 150_000  # the writer did commit while the backup was being prepared


def test_a_missing_sqlite_database_fails_clearly(back_up, tmp_path):
    data = back_up("gone", f"sqlite://{tmp_path}/missing.db")
    assert data["status"] == "Failed"
    assert data["error"] == f"SQLite database {tmp_path}/missing.db does not exist"


# --- files and command -----------------------------------------------------------------

def test_directory_backup_restores_with_tar(back_up, tmp_path):
    tree = tmp_path / "site"
    (tree / "uploads" / "2026").mkdir(parents=True)
    (tree / "index.html").write_text("<h1>hello</h1>\n")
    (tree / "uploads" / "2026" / "photo.bin").write_bytes(secrets.token_bytes(300_000))
    (tree / "latest").symlink_to("uploads/2026/photo.bin")
    data = back_up("site-files", f"files://{tree}", compression="gzip")
    assert_succeeded(data, ".tar.gz")

    restored = tmp_path / "restored"
    restored.mkdir()
    subprocess.run(["tar", "-xzf", data["path"], "-C", str(restored)], check=True)
    for original in tree.rglob("*"):
        copy = restored / original.relative_to(tree)
        if original.is_symlink():
            assert copy.readlink() == original.readlink()
        elif original.is_file():
            assert copy.read_bytes() == original.read_bytes()
        else:
            assert copy.is_dir()


def test_command_backup_stores_its_stdout(back_up):
    data = back_up("report", "command:printf 'line one\\n'; seq 1 50000")
    assert_succeeded(data, ".out.zst")
    expected = b"line one\n" + "".join(f"{i}\n" for i in range(1, 50001)).encode()
    assert decompress(data["path"]) == expected


def test_a_failing_first_stage_of_a_command_pipeline_fails_the_backup(back_up):
    data = back_up("piped", "command:echo partial; false | cat")
    assert data["status"] == "Failed"
    assert data["error"].startswith("bash exited with status 1")


def test_without_bash_a_command_runs_under_sh_and_the_logs_say_so(client, auth, make_job, start_worker, tmp_path):
    empty = tmp_path / "no-tools"
    empty.mkdir()
    job = make_job(name="no-bash", source="command:echo hello")
    start_worker(PATH=str(empty))
    data = run_to_end(client, auth, job.id)
    assert_succeeded(data, ".out.zst")
    assert any(line["level"] == "warning" and "bash is not installed: running the command with /bin/sh"
               in line["message"] for line in data["logs"])


def logged(data, text, level="warning"):
    return [line["message"] for line in data["logs"] if line["level"] == level and text in line["message"]]


GROWER = """
import os, sys
with open(sys.argv[1], "ab", buffering=0) as grown:
    grown.write(b"x")
    print("growing", flush=True)
    while True:
        grown.write(b"x")
"""


def test_a_file_growing_while_tar_reads_it_ends_success_with_a_warning(back_up, tmp_path):
    tree = tmp_path / "live"
    tree.mkdir()
    growing = tree / "app.log"
    growing.write_bytes(random.Random(11).randbytes(32 * 1024 * 1024))
    with meanwhile(GROWER, growing, ready="growing"):
        data = back_up("live", f"files://{tree}")
    assert_succeeded(data, ".tar.zst")
    assert logged(data, "file changed as we read it")
    assert logged(data, "tar exited with status 1, a warning")


CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, PR_CAPBSET_DROP = 1, 2, 24


def obeying_file_modes():
    """In the child before exec: drop the capabilities that let root read any file."""
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        for capability in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
            if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def test_an_unreadable_file_fails_the_directory_backup_with_tars_error(
        client, auth, make_job, start_worker, tmp_path):
    tree = tmp_path / "private"
    tree.mkdir()
    (tree / "readable.txt").write_text("fine\n")
    unreadable = tree / "shadow"
    unreadable.write_text("secret\n")
    unreadable.chmod(0)
    try:
        check = subprocess.run(["cat", str(unreadable)], preexec_fn=obeying_file_modes, capture_output=True)
    except subprocess.SubprocessError as exc:
        pytest.skip(f"cannot drop the capability to read any file here: {exc}")
    if check.returncode == 0:
        pytest.skip("a file with mode 000 is still readable here")
    job = make_job(name="private", source=f"files://{tree}")
    start_worker(preexec_fn=obeying_file_modes)
    data = run_to_end(client, auth, job.id)
    assert data["status"] == "Failed"
    assert data["error"].startswith("tar exited with status 2") and "Permission denied" in data["error"]
    assert list(job_directory(job_of(data)).iterdir()) == []


def archived_names(data):
    return set(subprocess.run(["tar", "-tf", "-"], input=decompress(data["path"]), capture_output=True,
                              check=True).stdout.decode().split())


def test_excluded_patterns_are_left_out_of_a_directory_backup(client, auth, runner, start_worker, tmp_path):
    tree = tmp_path / "site"
    (tree / "cache" / "deep").mkdir(parents=True)
    (tree / "cache" / "deep" / "page.html").write_text("cached\n")
    (tree / "error.log").write_text("log\n")
    (tree / "keep.txt").write_text("keep\n")
    added = runner("jobs", "add", "site", "--source", f"files://{tree}", "--destination", tmp_path / "backups",
                   "--exclude", "*.log", "--exclude", "./cache")
    assert added.exit_code == 0, added.output
    start_worker()
    data = run_to_end(client, auth, added.output.strip().splitlines()[-1])
    assert_succeeded(data, ".tar.zst")
    assert archived_names(data) == {"./", "./keep.txt"}


def test_extended_attributes_survive_a_directory_backup_restored_with_tar_xattrs(back_up, tmp_path):
    tree = tmp_path / "tagged"
    tree.mkdir()
    tagged = tree / "photo.jpg"
    tagged.write_bytes(b"jpeg")
    try:
        os.setxattr(tagged, "user.backhook.origin", b"camera \xe2\x98\x83")
    except OSError as exc:
        pytest.skip(f"this file system keeps no user.* extended attributes: {exc}")
    data = back_up("tagged", f"files://{tree}")
    assert_succeeded(data, ".tar.zst")
    restored = tmp_path / "restored"
    restored.mkdir()
    subprocess.run(["tar", "--xattrs", "-x", "-f", "-", "-C", str(restored)], input=decompress(data["path"]),
                   check=True)
    assert os.getxattr(restored / "photo.jpg", "user.backhook.origin") == b"camera \xe2\x98\x83"


@pytest.fixture
def mounted_inside(tmp_path):
    """A directory tree with another file system (a small tmpfs) mounted inside it."""
    tree = tmp_path / "host"
    (tree / "mnt").mkdir(parents=True)
    (tree / "local.txt").write_text("local\n")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(tree / "mnt")],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    (tree / "mnt" / "elsewhere.txt").write_text("on another file system\n")
    yield tree
    subprocess.run(["umount", str(tree / "mnt")], check=True)


def test_one_file_system_leaves_out_what_is_mounted_below_the_directory(back_up, mounted_inside):
    data = back_up("one-fs", f"files://{mounted_inside}", one_file_system=True)
    assert_succeeded(data, ".tar.zst")
    assert "./mnt/elsewhere.txt" not in archived_names(data) and "./local.txt" in archived_names(data)


def mixed_tree(root, files=24, size=1_000_000):
    """Text and random files, several zstd jobs' worth, so that both compression threads get work."""
    rng = random.Random(7)
    words = b"backup restore verify stage worker lease 2026 INFO GET /api/jobs ".split()
    for number in range(files):
        folder = root / f"dir{number % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        data = (rng.randbytes(size) if number % 2 else
                b" ".join(rng.choice(words) for _ in range(size // 5))[:size])
        (folder / f"file{number}").write_bytes(data)
    return root


def test_zstd_directory_backup_restores_with_stock_zstd_and_tar(back_up, tmp_path):
    tree = mixed_tree(tmp_path / "tree")
    data = back_up("tree", f"files://{tree}")
    assert_succeeded(data, ".tar.zst")

    restored = tmp_path / "restored"
    restored.mkdir()
    subprocess.run(f'zstd -dc "{data["path"]}" | tar -xf - -C "{restored}"', shell=True, check=True)
    for original in tree.rglob("*"):
        if original.is_file():
            assert (restored / original.relative_to(tree)).read_bytes() == original.read_bytes()


@pytest.fixture
def full_disk(tmp_path):
    """A 1 MiB filesystem, so that a larger backup runs out of space for real."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def test_a_full_disk_fails_the_backup_and_leaves_no_partial_file(back_up, full_disk):
    data = back_up("too-big", "command:head -c 3000000 /dev/urandom", destination=str(full_disk))
    assert data["status"] == "Failed"
    assert "No space left on device" in data["error"]
    assert list(job_directory(job_of(data)).iterdir()) == []


# --- retention ---------------------------------------------------------------------------

def test_retention_deletes_only_older_successful_artifacts_of_the_same_job(
        client, auth, make_job, start_worker):
    job = make_job(name="kept", source="command:echo data", keep=2)
    neighbour = make_job(name="neighbour", source="command:echo other")
    failing = make_job(name="kept-too", source="command:exit 1", keep=1)
    start_worker()
    neighbour_data = run_to_end(client, auth, neighbour.id)
    run_to_end(client, auth, failing.id)
    runs = [run_to_end(client, auth, job.id) for _ in range(3)]

    assert [run["status"] for run in runs] == ["Success"] * 3
    assert not Path(runs[0]["path"]).exists()
    assert Execution.get_by_id(runs[0]["id"]).path is None
    assert all(Path(run["path"]).exists() for run in runs[1:])
    assert sorted(p.name for p in job_directory(job).iterdir()) == sorted(
        name for r in runs[1:] for name in (Path(r["path"]).name, Path(r["path"]).name + ".json"))
    assert Path(neighbour_data["path"]).exists()
    assert any("retention: deleted" in line["message"] for line in runs[2]["logs"])


def test_retention_never_deletes_the_newest_successful_backup_even_when_an_older_run_finishes_last(
        client, auth, make_job, start_worker, tmp_path):
    first, go = tmp_path / "first", tmp_path / "go"
    job = make_job(name="overlap", keep=1, source=f"command:if [ -e {first} ]; then echo quick; else touch {first}; "
                                                  f"while [ ! -e {go} ]; do sleep 0.05; done; echo slow; fi")
    Setting.write("max_concurrent_jobs", 2)
    start_worker()
    older = trigger(client, auth, job.id)
    wait_until(first.exists, message="the older run to be under way")
    newer = wait_for_status(client, auth, trigger(client, auth, job.id))  # triggered later, finished first
    go.touch()
    older_data = wait_for_status(client, auth, older)

    assert newer["status"] == older_data["status"] == "Success"
    assert Path(newer["path"]).exists() and Execution.get_by_id(newer["id"]).path == newer["path"]
    assert Path(older_data["path"]).exists()  # its own artifact, just verified, is never pruned by itself


# --- postgresql ----------------------------------------------------------------------------

def test_postgresql_backup_restores_with_psql(back_up, pg_databases):
    source, target = pg_databases(), pg_databases()
    psql(source, "-c", "CREATE TABLE item (id serial PRIMARY KEY, name text, made timestamptz DEFAULT now());"
                       "INSERT INTO item (name) SELECT 'item ' || g || ' ☃' FROM generate_series(1, 5000) g;")
    data = back_up("pg", f"postgresql://postgres@127.0.0.1:5432/{source}")
    assert_succeeded(data, ".sql.zst")

    psql(target, stdin=decompress(data["path"]))
    query = "SELECT * FROM item ORDER BY id"
    assert psql(target, "-At", "-c", query) == psql(source, "-At", "-c", query)


def test_postgresql_failure_shows_pg_dumps_error_without_the_password(
        back_up, client, auth, postgres_url):
    missing = unique_name()
    data = back_up("pg-missing", f"postgresql://postgres:Sup3rS3cret@127.0.0.1:5432/{missing}")
    assert data["status"] == "Failed"
    assert "pg_dump exited with status 1" in data["error"] and missing in data["error"]
    listing = client.get("/api/jobs", headers=auth).get_data(as_text=True)
    assert "Sup3rS3cret" not in str(data) and "Sup3rS3cret" not in listing
    assert job_directory(job_of(data)).exists() and not list(job_directory(job_of(data)).iterdir())


def test_postgresql_sslmode_reaches_pg_dump_so_a_server_without_tls_is_refused(back_up, pg_databases):
    data = back_up("pg-tls", f"postgresql://postgres@127.0.0.1:5432/{pg_databases()}?sslmode=require")
    assert data["status"] == "Failed"
    assert "server does not support SSL, but SSL was required" in data["error"]


def pg_sessions_named(application_name):
    with psycopg2.connect("postgresql://postgres@127.0.0.1:5432/postgres") as db, db.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (application_name,))
        count = cursor.fetchone()[0]
    db.close()
    return count


def test_postgresql_options_reach_the_server_and_secret_ones_stay_off_the_command_line(
        client, auth, make_job, start_worker, pg_databases):
    database, application_name, secret = pg_databases(), unique_name(), f"Xq7zK9v{secrets.token_hex(4)}"
    psql(database, "-c", "CREATE TABLE item (id int); INSERT INTO item VALUES (1);")
    job = make_job(name="pg-named", source=f"postgresql://postgres@127.0.0.1:5432/{database}"
                                           f"?application_name={application_name}&sslpassword={secret}")
    worker = start_worker()
    holder = psycopg2.connect(f"postgresql://postgres@127.0.0.1:5432/{database}")
    try:
        holder.cursor().execute("LOCK TABLE item IN ACCESS EXCLUSIVE MODE")  # pg_dump waits here, connected
        execution_id = trigger(client, auth, job.id)
        wait_until(lambda: pg_sessions_named(application_name), timeout=20,
                   message=f"pg_dump to connect as {application_name}")
        command_lines = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        assert "pg_dump" in command_lines and secret not in command_lines
    finally:
        holder.rollback()
        holder.close()
    data = wait_for_status(client, auth, execution_id)
    assert_succeeded(data, ".sql.zst")
    assert secret not in str(data) and secret not in worker.output()


# --- mariadb / mysql -------------------------------------------------------------------------

def test_mysql_backup_restores_with_mariadb(back_up, mysql_databases):
    source, target = mysql_databases(), mysql_databases()
    mariadb("-e", "CREATE TABLE item (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(100)) ENGINE=InnoDB;"
                  "INSERT INTO item (name) SELECT CONCAT('item ', seq, ' ☃') FROM seq_1_to_5000;",
            database=source)
    data = back_up("maria", f"mysql://root@127.0.0.1:3306/{source}")
    assert_succeeded(data, ".sql.zst")

    mariadb(database=target, stdin=decompress(data["path"]))
    query = ("-N", "-e", "SELECT * FROM item ORDER BY id")
    assert mariadb(*query, database=target) == mariadb(*query, database=source)


def test_mysql_bad_credentials_fail_with_the_tools_error_without_the_password(back_up, mysql_url):
    data = back_up("maria-denied", "mysql://root:Wr0ngPassw0rd@127.0.0.1:3306/test")
    assert data["status"] == "Failed"
    assert "Access denied" in data["error"]
    assert "Wr0ngPassw0rd" not in str(data)


def test_mysql_options_reach_mariadb_dump_as_its_flags(back_up, mysql_databases):
    source = mysql_databases()
    mariadb("-e", "CREATE TABLE item (id INT PRIMARY KEY) ENGINE=InnoDB; INSERT INTO item VALUES (1);",
            database=source)
    data = back_up("maria-latin1", f"mysql://root@127.0.0.1:3306/{source}?charset=latin1")
    assert_succeeded(data, ".sql.zst")
    assert b"SET NAMES latin1" in decompress(data["path"])


def test_mysql_ssl_mode_required_refuses_a_server_without_tls(back_up, mysql_databases):
    data = back_up("maria-tls", f"mysql://root@127.0.0.1:3306/{mysql_databases()}?ssl-mode=REQUIRED")
    assert data["status"] == "Failed"
    assert "SSL is required, but the server does not support it" in data["error"]


def test_a_password_given_as_an_option_reaches_the_tool_and_never_shows(
        client, auth, make_job, start_worker, mysql_url):
    job = make_job(name="maria-option", source="mysql://root@127.0.0.1:3306/test?password=Wr0ngQu3ry")
    worker = start_worker()
    data = run_to_end(client, auth, job.id)
    assert data["status"] == "Failed"
    assert "Access denied" in data["error"] and "using password: YES" in data["error"]
    assert any("mysql://root@127.0.0.1:3306/test?password=***" in line["message"] for line in data["logs"])
    listing = client.get("/api/jobs", headers=auth).get_data(as_text=True)
    for output in (str(data), worker.output(), listing):
        assert "Wr0ngQu3ry" not in output
