"""age encryption: the job's recipients, encrypted backups the stock age decrypts, and restores that need the identity."""
import json
import os
import subprocess
import time

import pytest
import zstandard

import encryption
import leases
import models
from models import Execution, Job
from restore import Restore, queue_restore
from sources import BackupError, SourceError
from statuses import ExecutionStatus, ExecutionType, Stage
from support import age_keys, require_tool, run_in_process, wait_until

COMMAND = r"printf 'secret rows\n\000\377'; seq 1 50000"


@pytest.fixture
def keys(tmp_path):
    return age_keys(tmp_path / "keys")


def plain_output():
    return subprocess.run(["bash", "-c", COMMAND], capture_output=True, check=True).stdout


def age_decrypt(path, identity):
    return subprocess.run(["age", "-d", "-i", str(identity), str(path)], capture_output=True)


# --- recipients at jobs add -------------------------------------------------------------

def test_age_and_ssh_public_keys_are_accepted_and_shown(runner, keys, tmp_path):
    result = runner("jobs", "add", "sealed", "--source", "command:echo hi", "--destination", tmp_path,
                    "--encrypt-to", keys["age"][1], "--encrypt-to", keys["ssh"][1])
    assert result.exit_code == 0, result.output
    assert "age-encrypted to 2 recipients" in result.output
    assert Job.get(Job.name == "sealed").recipient_keys() == [keys["age"][1], keys["ssh"][1]]
    listed = runner("jobs", "list").output
    assert keys["age"][1] in listed and keys["ssh"][1] in listed
    shown = runner("jobs", "show", "sealed").output
    assert f"recipients       {keys['age'][1]}; {keys['ssh'][1]}" in shown


def test_an_rsa_key_and_a_recipients_file_with_comments_are_accepted(runner, keys, tmp_path):
    require_tool("ssh-keygen")
    rsa = tmp_path / "id_rsa"
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", str(rsa)], check=True)
    recipients = tmp_path / "recipients.txt"
    recipients.write_text(f"# the restore team\n\n{keys['age'][1]}\n  # the laptop\n"
                          f"{public_key_of(rsa)}\n{keys['age'][1]}\n")
    result = runner("jobs", "add", "filed", "--source", "command:echo hi", "--destination", tmp_path,
                    "--encrypt-to-file", recipients)
    assert result.exit_code == 0, result.output
    assert Job.get(Job.name == "filed").recipient_keys() == [keys["age"][1], public_key_of(rsa)]  # duplicates once


def public_key_of(private_key):
    return open(f"{private_key}.pub").read().strip()


def test_the_api_lists_the_recipients(client, auth, make_job, keys):
    make_job(name="sealed", source="command:echo hi", recipients=json.dumps([keys["age"][1]]))
    make_job(name="plain", source="command:echo hi")
    jobs = {job["name"]: job for job in client.get("/api/jobs", headers=auth).get_json()["data"]}
    assert jobs["sealed"]["encryptTo"] == [keys["age"][1]] and jobs["plain"]["encryptTo"] == []


@pytest.mark.parametrize("bad, message", [
    ("age1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq", "not a valid age1"),
    ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBad", "not an ssh-ed25519 public key"),
    ("ssh-ed25519 !!not-base64!!", "not base64"),
    ("ssh-dss AAAAB3NzaC1kc3MAAACBAP", "neither an age1"),
    ("AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ", "only public keys"),
])
def test_a_bad_recipient_is_refused_naming_it(runner, tmp_path, bad, message):
    result = runner("jobs", "add", "bad", "--source", "command:echo hi", "--destination", tmp_path,
                    "--encrypt-to", bad)
    assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output
    assert not bad.startswith("AGE-SECRET") or bad not in result.output
    assert not Job.select().where(Job.name == "bad").exists()


def test_a_flipped_character_breaks_the_age_checksum(keys):
    good = keys["age"][1]
    flipped = good[:-1] + ("q" if good[-1] != "q" else "p")
    assert encryption.recipient_problem(good) is None
    assert "checksum" in encryption.recipient_problem(flipped)


@pytest.mark.parametrize("private", ["age", "ssh"])
def test_a_recipients_file_holding_a_private_key_is_refused_without_echoing_it(runner, keys, tmp_path, private):
    recipients = tmp_path / "recipients.txt"
    secret = keys[private][0].read_text()
    recipients.write_text(f"{keys['age'][1]}\n{secret}")
    result = runner("jobs", "add", "leaky", "--source", "command:echo hi", "--destination", tmp_path,
                    "--encrypt-to-file", recipients)
    assert result.exit_code != 0 and "only public keys" in result.output and "line " in result.output
    body = [line for line in secret.splitlines() if line and not line.startswith(("#", "-----"))]
    assert not any(line in result.output for line in body)
    assert not Job.select().where(Job.name == "leaky").exists()


def test_a_recipients_file_names_its_bad_line(tmp_path, keys):
    recipients = tmp_path / "recipients.txt"
    recipients.write_text(f"# ok\n{keys['age'][1]}\nnot a key\n")
    with pytest.raises(SourceError, match=r"line 3 \(not a key\)"):
        encryption.parse_recipients(files=[recipients])
    recipients.write_text("# only comments\n")
    with pytest.raises(SourceError, match="holds no recipient"):
        encryption.parse_recipients(files=[recipients])


# --- recipients at jobs set -------------------------------------------------------------

def test_jobs_set_replaces_and_removes_the_recipients_and_the_next_backup_follows(runner, make_job, keys, tmp_path):
    job = make_job(name="later", source=f"command:{COMMAND}")
    recipients = tmp_path / "recipients.txt"
    recipients.write_text(f"# the laptop\n{keys['ssh'][1]}\n")
    result = runner("jobs", "set", "later", "--encrypt-to", keys["age"][1], "--encrypt-to-file", recipients)
    assert result.exit_code == 0, result.output
    assert "recipients none (not encrypted) → " in result.output and "keep the encryption" in result.output
    assert Job.get_by_id(job.id).recipient_keys() == [keys["age"][1], keys["ssh"][1]]
    sealed = run_in_process(Job.get_by_id(job.id))
    assert sealed.status == ExecutionStatus.SUCCESS and sealed.path.endswith(".out.zst.age"), sealed.error
    assert zstandard.ZstdDecompressor().decompressobj().decompress(
        age_decrypt(sealed.path, keys["ssh"][0]).stdout) == plain_output()

    assert runner("jobs", "set", "later", "--encrypt-to", keys["ssh"][1]).exit_code == 0
    assert Job.get_by_id(job.id).recipient_keys() == [keys["ssh"][1]]  # replaced, not added to
    again = runner("jobs", "set", "later", "--encrypt-to", keys["ssh"][1])
    assert again.exit_code == 0 and "nothing changed" in again.output

    cleared = runner("jobs", "set", job.id, "--no-encryption")
    assert cleared.exit_code == 0 and "→ none (not encrypted)" in cleared.output
    assert Job.get_by_id(job.id).recipients is None
    plain = run_in_process(Job.get_by_id(job.id))
    assert plain.status == ExecutionStatus.SUCCESS and plain.path.endswith(".out.zst"), plain.error
    assert age_decrypt(sealed.path, keys["age"][0]).returncode == 0  # the older backup stays as it was made


@pytest.mark.parametrize("options, message", [
    (["--encrypt-to", "AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ"], "only public keys"),
    (["--encrypt-to", "ssh-dss AAAAB3NzaC1kc3MAAACBAP"], "neither an age1"),
    (["--encrypt-to-file", "/nonexistent/recipients.txt"], "cannot read it"),
    (["--no-encryption", "--encrypt-to", "AGE"], "contradict"),
])
def test_jobs_set_refuses_bad_recipients_as_jobs_add_does_and_changes_nothing(runner, make_job, keys, options,
                                                                               message):
    job = make_job(name="kept", source="command:echo hi", recipients=json.dumps([keys["age"][1]]))
    result = runner("jobs", "set", "kept", *options)
    assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output
    assert "AGE-SECRET-KEY" not in result.output
    assert Job.get_by_id(job.id).recipient_keys() == [keys["age"][1]]


# --- encrypted backups ---------------------------------------------------------------------

def sealed_backup(make_job, keys, name="sealed", compression="zstd", source=f"command:{COMMAND}"):
    job = make_job(name=name, source=source, compression=compression,
                   recipients=json.dumps([keys["age"][1], keys["ssh"][1]]))
    execution = run_in_process(job)
    assert execution.status == ExecutionStatus.SUCCESS, execution.error
    return job, execution


@pytest.mark.sqlite_only("the metadata backend plays no part in what age writes")
def test_the_stock_age_decrypts_a_backup_with_either_identity_to_the_plain_backups_bytes(make_job, keys):
    _job, sealed = sealed_backup(make_job, keys)
    assert sealed.path.endswith(".out.zst.age")
    plain = run_in_process(make_job(name="plain", source=f"command:{COMMAND}"))
    expected = zstandard.ZstdDecompressor().decompressobj().decompress(open(plain.path, "rb").read())
    assert expected == plain_output()
    for identity in (keys["age"][0], keys["ssh"][0]):
        result = age_decrypt(sealed.path, identity)
        assert result.returncode == 0, result.stderr
        assert zstandard.ZstdDecompressor().decompressobj().decompress(result.stdout) == expected
    raw = open(sealed.path, "rb").read()
    assert raw.startswith(b"age-encryption.org/v1\n") and b"secret rows" not in raw
    document = json.load(open(sealed.path + ".json"))
    assert document["encryption"] == {"format": "age", "recipients": [keys["age"][1], keys["ssh"][1]]}
    assert any(line.startswith('age -d -i "$IDENTITY"') for line in document["restore"])


@pytest.mark.sqlite_only("the metadata backend plays no part in a failing age process")
def test_age_dying_mid_backup_fails_it_and_leaves_no_artifact(make_job, keys, tmp_path, monkeypatch):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "age").write_text("#!/bin/sh\nhead -c 1000 >/dev/null\necho 'age: error: disk on fire' >&2\nexit 1\n")
    os.chmod(fake / "age", 0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    job = make_job(name="doomed", source=f"command:{COMMAND}", recipients=json.dumps([keys["age"][1]]))
    execution = run_in_process(job)
    assert execution.status == ExecutionStatus.FAILED and "disk on fire" in execution.error
    directory = tmp_path / "backups" / "doomed"
    assert not directory.exists() or list(directory.iterdir()) == []


# --- restores ------------------------------------------------------------------------------

def restore_here(backup_id, target, identity_file=None, worker_id="restorer", replace=False):
    """Queue, claim and run one restore of `backup_id` into `target` in this process, as a worker does."""
    queued = queue_restore(backup_id, target, replace)
    (execution,) = [claimed for claimed in leases.claim(worker_id, 60_000) if claimed.id == queued.id]
    Restore(execution, execution.job, worker_id, time.monotonic() + 60, identity_file).execute()
    return Execution.get_by_id(queued.id)


@pytest.mark.parametrize("key", ["age", "ssh"])
def test_a_restore_decrypts_with_the_worker_environments_identity(make_job, keys, tmp_path, monkeypatch, key):
    _job, backup = sealed_backup(make_job, keys)
    monkeypatch.setenv(encryption.IDENTITY_VARIABLE, str(keys[key][0]))
    target = tmp_path / "restored.out"
    job = Job.get(Job.name == "sealed")
    Job.update(restore_command=f"cat > {target}").where(Job.id == job.id).execute()
    restored = restore_here(backup.id, None)
    assert restored.status == ExecutionStatus.SUCCESS, restored.error
    assert target.read_bytes() == plain_output()


def test_without_an_identity_the_restore_fails_at_verifying_and_touches_nothing(make_job, keys, tmp_path,
                                                                               monkeypatch):
    monkeypatch.delenv(encryption.IDENTITY_VARIABLE, raising=False)
    source = tmp_path / "site"
    source.mkdir()
    (source / "page.html").write_text("new\n")
    _job, backup = sealed_backup(make_job, keys, name="site", source=f"files://{source}")
    target = tmp_path / "live"
    target.mkdir()
    (target / "page.html").write_text("old\n")
    restored = restore_here(backup.id, f"files://{target}", replace=True)  # even allowed to, it touches nothing
    assert restored.status == ExecutionStatus.FAILED and restored.stage == Stage.FAILED
    assert encryption.IDENTITY_VARIABLE in restored.error and "--identity-file" in restored.error
    stages = {line.stage for line in restored.logs}
    assert Stage.VERIFYING in stages and Stage.RESTORING not in stages  # it stopped before restoring began
    assert [path.name for path in target.iterdir()] == ["page.html"] and (target / "page.html").read_text() == "old\n"


def test_a_wrong_identity_fails_the_restore_and_touches_nothing(make_job, keys, tmp_path, monkeypatch):
    stranger = age_keys(tmp_path / "stranger")
    source = tmp_path / "site"
    source.mkdir()
    (source / "page.html").write_text("new\n")
    _job, backup = sealed_backup(make_job, keys, name="site", source=f"files://{source}")
    monkeypatch.setenv(encryption.IDENTITY_VARIABLE, str(stranger["age"][0]))
    target = tmp_path / "live"
    target.mkdir()
    (target / "page.html").write_text("old\n")
    restored = restore_here(backup.id, f"files://{target}", replace=True)  # even allowed to, it touches nothing
    assert restored.status == ExecutionStatus.FAILED
    assert "age could not decrypt the artifact: no identity matched any of the recipients" in restored.error
    assert [path.name for path in target.iterdir()] == ["page.html"] and (target / "page.html").read_text() == "old\n"


def test_backhook_restore_identity_file_restores_in_the_cli_and_stores_no_private_key(
        runner, make_job, keys, tmp_path, app, monkeypatch):
    monkeypatch.delenv(encryption.IDENTITY_VARIABLE, raising=False)
    _job, backup = sealed_backup(make_job, keys)
    target = tmp_path / "restored.out"
    Job.update(restore_command=f"cat > {target}").where(Job.name == "sealed").execute()
    result = runner("restore", backup.id, "--identity-file", keys["ssh"][0])  # no worker runs: the CLI does
    assert result.exit_code == 0, result.output
    assert "in this process" in result.output and "Completed" in result.output
    assert target.read_bytes() == plain_output()
    restore_row = Execution.get((Execution.type == ExecutionType.RESTORE) & (Execution.restores == backup.id))
    assert restore_row.status == ExecutionStatus.SUCCESS and restore_row.worker_id is None

    # Neither identity, nor even its file's name, is in the database (its rows, logs included) or the data directory.
    secrets = [b"AGE-SECRET-KEY", keys["age"][0].read_text().split("AGE-SECRET-KEY-")[1][:40].encode(),
               *[line.encode() for line in keys["ssh"][0].read_text().splitlines() if "-----" not in line][:3],
               str(keys["ssh"][0]).encode()]
    for directory, _dirs, files in os.walk(app.config["DATA_DIR"]):
        for name in files:
            content = open(os.path.join(directory, name), "rb").read()
            assert not any(secret in content for secret in secrets), name
    for table in models.database.get_tables():
        text = repr(models.database.execute_sql(f'SELECT * FROM "{table}"').fetchall()).encode()
        assert not any(secret in text for secret in secrets), table


@pytest.mark.sqlite_only("the metadata backend plays no part in how the worker finds its identity")
def test_a_worker_restores_an_encrypted_backup_with_its_environment_identity(
        client, auth, make_job, keys, tmp_path, start_worker):
    _job, backup = sealed_backup(make_job, keys)
    target = tmp_path / "restored.out"
    Job.update(restore_command=f"cat > {target}").where(Job.name == "sealed").execute()
    start_worker(**{encryption.IDENTITY_VARIABLE: str(keys["age"][0])})
    response = client.post(f"/api/executions/{backup.id}/restore", headers=auth)
    assert response.status_code == 200, response.get_json()
    restore_id = response.get_json()["executionId"]

    def finished():
        data = client.get(f"/api/executions/{restore_id}?includeLogs=true", headers=auth).get_json()["data"]
        return data if data["status"] in ("Success", "Failed", "Cancelled") else None

    data = wait_until(finished, timeout=60, message="the restore's end")
    assert data["status"] == "Success", data["error"]
    assert target.read_bytes() == plain_output()
    assert "AGE-SECRET-KEY" not in json.dumps(data)


def test_the_decryptor_raises_the_readers_error(tmp_path, keys):
    class Failing:
        def read(self, size):
            raise BackupError("the store went away")

    spawned = []

    def spawn(argv, **kwargs):
        from tools import start_tool
        spawned.append(start_tool(argv, **kwargs))
        return spawned[-1]

    stream = encryption.Decrypting(str(keys["age"][0]), spawn, Failing())
    with pytest.raises(BackupError, match="the store went away"):
        stream.read(1024)
