"""Helpers the tests share that are not fixtures."""
import getpass
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import psycopg2
import pytest
import requests

PROJECT = Path(__file__).resolve().parent.parent
TOKEN = "test-webhook-token"
# CI sets this so that a missing service fails the run instead of skipping tests.
REQUIRE_SERVICES = os.environ.get("BACKHOOK_REQUIRE_SERVICES") == "1"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout=10.0, interval=0.02, message="condition"):
    """Poll `predicate` until it returns a truthy value; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


def require_service(name, host, port):
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError:
        message = f"{name} is not reachable on {host}:{port}"
        if REQUIRE_SERVICES:
            pytest.fail(message)
        pytest.skip(message)


def require_tool(*names):
    """Skip (fail under BACKHOOK_REQUIRE_SERVICES=1) when a tool the test runs is not installed."""
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        message = f"{', '.join(missing)} not installed (Debian: apt-get install age openssh-client)"
        if REQUIRE_SERVICES:
            pytest.fail(message)
        pytest.skip(message)


def age_keys(directory):
    """A fresh age identity and an SSH ed25519 key pair in `directory`: {"age": (key.txt, age1…),
    "ssh": (id_ed25519, "ssh-ed25519 …")}, made by the stock age-keygen and ssh-keygen."""
    require_tool("age", "age-keygen", "ssh-keygen")
    Path(directory).mkdir(parents=True, exist_ok=True)
    identity = Path(directory) / "key.txt"
    subprocess.run(["age-keygen", "-o", str(identity)], check=True, capture_output=True)
    public = subprocess.run(["age-keygen", "-y", str(identity)], check=True, capture_output=True,
                            text=True).stdout.strip()
    ssh = Path(directory) / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "restorer@example", "-f", str(ssh)],
                   check=True, capture_output=True)
    return {"age": (identity, public), "ssh": (ssh, Path(f"{ssh}.pub").read_text().strip())}


# The server whose scratch databases the tests use (--backend=postgresql, migrate-db).
POSTGRES_SERVER = os.environ.get("BACKHOOK_TEST_POSTGRES_SERVER", "postgresql://postgres@127.0.0.1:5432")


def unique_name():
    return f"bh_{secrets.token_hex(6)}"


def scratch_databases(execute, create, drop):
    """A factory of uniquely named databases on a server other tests share; drops them afterwards."""
    created = []

    def make():
        name = unique_name()
        execute(create.format(name))
        created.append(name)
        return name

    yield make
    for name in created:
        execute(drop.format(name))


PG = ["-h", "127.0.0.1", "-p", "5432", "-U", "postgres"]
MARIADB = ["-h", "127.0.0.1", "-P", "3306", "-u", "root"]


def psql(database, *args, stdin=None):
    return subprocess.run(["psql", *PG, "-d", database, "-v", "ON_ERROR_STOP=1", "-X", "-q", *args],
                          input=stdin, capture_output=True, check=True).stdout


def mariadb(*args, database=None, stdin=None):
    return subprocess.run(["mariadb", *MARIADB, *args, *([database] if database else [])],
                          input=stdin, capture_output=True, check=True).stdout


def require_postgres():
    server = urlparse(POSTGRES_SERVER)
    require_service("PostgreSQL", server.hostname, server.port or 5432)


@contextmanager
def scratch_postgres_database():
    """Create a uniquely named database on the shared server; drop it on exit.

    Other test runs use the same server at the same time, so nothing is ever
    created under a fixed name.
    """
    name = f"bh_{secrets.token_hex(8)}"
    admin = psycopg2.connect(f"{POSTGRES_SERVER}/postgres")
    admin.autocommit = True
    try:
        admin.cursor().execute(f'CREATE DATABASE "{name}"')
        yield f"{POSTGRES_SERVER}/{name}"
    finally:
        # FORCE ends connections a stopped test process may have left behind.
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def postgres_listeners(database_url):
    """The backend pids of the workers LISTENing for wake-ups on this database."""
    import wakeup

    with psycopg2.connect(database_url) as db, db.cursor() as cursor:
        cursor.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                       "AND application_name = %s", (wakeup.LISTENER_NAME,))
        pids = {row[0] for row in cursor.fetchall()}
    db.close()
    return pids


def lock_waiters(database_url):
    """How many sessions on this PostgreSQL database wait for a lock now."""
    with psycopg2.connect(database_url) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                       "AND wait_event_type = 'Lock'")
        waiting = cursor.fetchone()[0]
    conn.close()
    return waiting


# Another process takes the database's write lock, says so, holds it, and lets go.
# On PostgreSQL that is every table locked EXCLUSIVE: reads go on, writes wait.
HOLD_WRITE_LOCK = {
    "sqlite": """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1].removeprefix("sqlite:///"), isolation_level=None)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("COMMIT")
""",
    "postgresql": """
import psycopg2, sys, time
db = psycopg2.connect(sys.argv[1])
cursor = db.cursor()
cursor.execute("SELECT string_agg(quote_ident(tablename), ', ') FROM pg_tables WHERE schemaname = current_schema()")
cursor.execute(f"LOCK TABLE {cursor.fetchone()[0]} IN EXCLUSIVE MODE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.commit()
""",
}


def hold_write_lock(database_url, seconds):
    """Another process holding the database's write lock for `seconds`; returns once it holds it."""
    backend = "postgresql" if database_url.startswith("postgresql://") else "sqlite"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_WRITE_LOCK[backend], database_url, str(seconds)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


class LiveProcess:
    """A backhook process (gunicorn or worker) started for one test."""

    def __init__(self, command, env, url=None, preexec_fn=None):
        self.url = url
        self.log = open(Path(env["BACKHOOK_DATA_DIR"]) / f"process-{time.monotonic_ns()}.log", "w+")
        self.proc = subprocess.Popen(command, env=env, cwd=PROJECT, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=preexec_fn)

    def wait_until_answering(self, timeout=20):
        """Wait until the server answers GET /livez; fail at once, with its output, if it exits."""
        def answering():
            assert self.proc.poll() is None, self.output()
            try:
                return requests.get(self.url + "/livez", timeout=1).ok
            except requests.RequestException:  # booting, or a loaded machine
                return False

        wait_until(answering, timeout=timeout, message=f"{self.url} to answer")

    def output(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self, sig=15, timeout=15):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


FINISHED = ("Success", "Failed", "Cancelled")


def trigger(client, auth, job_id):
    response = client.post(f"/api/jobs/{job_id}/run", headers=auth)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["executionId"]


def poll(client, auth, execution_id, logs=False):
    response = client.get(f"/api/executions/{execution_id}" + ("?includeLogs=true" if logs else ""),
                          headers=auth)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["data"]


def wait_for_status(client, auth, execution_id, statuses=FINISHED, timeout=30):
    """Poll the API, as a client would, until the execution reaches one of `statuses`.

    A backup is Success from the moment it is recorded; its worker then still
    applies retention (stage "Applying Retention"), and this waits for that too.
    """
    return wait_until(lambda: (data := poll(client, auth, execution_id, logs=True))["status"] in statuses
                      and data["stage"] != "Applying Retention" and data,
                      timeout=timeout, message=f"execution {execution_id} to reach {statuses}")


def run_to_end(client, auth, job_id, timeout=30):
    return wait_for_status(client, auth, trigger(client, auth, job_id), timeout=timeout)


def run_in_process(job, worker_id="test-worker"):
    """Queue, claim and run one backup of `job` in this process, as a worker does; returns its final row."""
    import leases
    from backup import Run
    from models import Execution

    queued = Execution.enqueue(job)
    (execution,) = [claimed for claimed in leases.claim(worker_id, 60_000) if claimed.id == queued.id]
    Run(execution, job, worker_id, time.monotonic() + 60).execute()
    return Execution.get_by_id(queued.id)


def tree_listing(root):
    """Every entry under `root`: its mode, whole-second mtime and content (a symlink's target)."""
    found = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory, name)
            info = path.lstat()
            content = os.readlink(path) if path.is_symlink() else (path.read_bytes() if path.is_file() else None)
            found[str(path.relative_to(root))] = (info.st_mode, int(info.st_mtime), content)
    return found


class LoopbackS3:
    """moto_server, an S3-compatible server, on a free loopback port, with IAM authentication switched on.

    The server authenticates every request after its first AUTH_FREE_ACTIONS,
    which create the one IAM user whose keys the tests use: so wrong keys are
    refused as a real store refuses them. `env` is what a process needs to use
    it, through the standard AWS chain and nothing else.
    """

    AUTH_FREE_ACTIONS = 3

    def __init__(self, directory):
        binary = Path(sys.executable).with_name("moto_server")
        if not binary.exists():
            message = f"no S3 test server: {binary} is missing (pip install -e '.[test]' installs moto[server])"
            if REQUIRE_SERVICES:
                pytest.fail(message)
            pytest.skip(message)
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = open(Path(directory) / "moto_server.log", "w+")
        self.proc = subprocess.Popen([str(binary), "-H", "127.0.0.1", "-p", str(self.port)],
                                     env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(self.AUTH_FREE_ACTIONS)},
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(self.listening, timeout=30, message="moto_server to listen")
        self.access_key, self.secret_key = self.make_user()
        self.env = {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            # Nothing else of the machine's AWS configuration takes part.
            "AWS_CONFIG_FILE": str(Path(directory) / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(Path(directory) / "no-aws-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def listening(self):
        assert self.proc.poll() is None, self.output()
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def make_user(self):
        """The IAM user allowed s3:* (exactly AUTH_FREE_ACTIONS requests, the last ones without a key)."""
        import json

        import boto3

        iam = boto3.client("iam", endpoint_url=self.endpoint, region_name="us-east-1",
                           aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
        iam.create_user(UserName="backhook")
        key = iam.create_access_key(UserName="backhook")["AccessKey"]
        iam.put_user_policy(UserName="backhook", PolicyName="s3", PolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        return key["AccessKeyId"], key["SecretAccessKey"]

    def client(self):
        """A boto3 client of the test's own, to look at the bucket from outside backhook."""
        import boto3
        import botocore.config

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
                            config=botocore.config.Config(s3={"addressing_style": "path"}))

    def make_bucket(self):
        name = f"bh-{secrets.token_hex(6)}"
        self.client().create_bucket(Bucket=name)
        return name

    def destination(self, bucket, prefix="backups"):
        return f"s3://{bucket}/{prefix}?endpoint={self.endpoint}&region=us-east-1"

    def output(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


SSHD = "/usr/sbin/sshd"
# sshd run by root insists on this privilege separation directory, which a
# machine that never started its own sshd lacks; Debian's unit creates it too.
SSHD_PRIVSEP = Path("/run/sshd")


class SftpServer:
    """Debian's sshd on a loopback port, as this user, with its own config, host key and authorized key.

    It serves SFTP on `port`, and read-only SFTP (a store where writing is
    refused) on `readonly_port`. `rclone_config` defines the remotes `loop`
    and `readonly` on them, and `down` on a port nothing listens on.
    """

    def __init__(self, root):
        missing = [tool for tool in (SSHD, "ssh-keygen", "rclone") if not shutil.which(tool)]
        if missing:
            message = f"the SFTP tests need {', '.join(missing)}, which is not installed"
            if REQUIRE_SERVICES:
                pytest.fail(message)
            pytest.skip(message)
        if os.geteuid() == 0 and not SSHD_PRIVSEP.is_dir():
            SSHD_PRIVSEP.mkdir(mode=0o755)
        self.root, self.port, self.readonly_port = Path(root), free_port(), free_port()
        self.store = self.root / "store"
        self.store.mkdir()
        for key in ("host_key", "client_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.root / key)], check=True)
        (self.root / "authorized_keys").write_bytes((self.root / "client_key.pub").read_bytes())
        (self.root / "sshd_config").write_text(
            f"ListenAddress 127.0.0.1\nPort {self.port}\nPort {self.readonly_port}\n"
            f"HostKey {self.root / 'host_key'}\nAuthorizedKeysFile {self.root / 'authorized_keys'}\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
            "PidFile none\nSubsystem sftp internal-sftp\n"
            f"Match LocalPort {self.readonly_port}\n    ForceCommand internal-sftp -R\n")
        remote = ("type = sftp\nhost = 127.0.0.1\nuser = {user}\nport = {port}\nkey_file = {key}\n"
                  "known_hosts_file =\ndisable_hashcheck = true\n")
        self.rclone_config = self.root / "rclone.conf"
        self.rclone_config.write_text("".join(
            f"[{name}]\n" + remote.format(user=getpass.getuser(), port=port, key=self.root / "client_key")
            for name, port in (("loop", self.port), ("readonly", self.readonly_port), ("down", free_port()))))
        self.log = open(self.root / "sshd.log", "w+")
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.root / "sshd_config")],
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        for port in (self.port, self.readonly_port):
            wait_until(lambda port=port: self.answers(port), timeout=10, message=f"sshd to listen on {port}")

    def answers(self, port):
        assert self.proc.poll() is None, (self.root / "sshd.log").read_text()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.log.close()
