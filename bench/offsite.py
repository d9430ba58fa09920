"""Off-site speed and memory: a directory backup to a loopback S3 server vs `tar | zstd | rclone rcat`.

The server is moto_server (the test extra's S3-compatible server) on a free
loopback port; both contenders write to the same bucket with the same fake
keys. The source is bench/backup_speed.py's directory tree (--size-mb).

backhook runs the real path: `backhook serve` and `backhook worker`, a job
whose one destination is `s3://bench/offsite?endpoint=…` (made with `jobs add`,
its destination then set with plain SQL), triggered over HTTP; the time is
trigger -> Success (pickup, upload, completing the upload and the verifying
re-read from S3), after one untimed backup that warms the worker and the
server. The baseline, in the same run, alternating:

    tar -cf - -C PARENT DIR | zstd -q | rclone rcat benchs3:bench/plain.tar.zst

with rclone's S3 remote configured by RCLONE_CONFIG_BENCHS3_* variables.
While backhook runs, the RSS of the worker and its children is sampled every 20 ms.

With --age, backhook's job also encrypts to an age key made here
(bench/backup_age.py's); the baseline stays the same.

Targets (SPEC.md, "Off-site speed"): throughput >= 0.8x the baseline, 0.7x with age; peak RSS < 150 MB.

    .venv/bin/python bench/offsite.py [--size-mb 1024] [--rounds 3] [--age] [--quick]
"""
import argparse
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import requests

import backup_age
import backup_speed
import common

TARGET_RATIO, TARGET_AGE_RATIO, TARGET_RSS_MB = 0.8, 0.7, 150
BUCKET = "bench"


class LoopbackS3:
    """moto_server on a free port, with fake keys that both contenders use."""

    def __init__(self, data_dir):
        binary = Path(sys.executable).with_name("moto_server")
        if not binary.exists():
            sys.exit(f"bench: {binary} is missing: `pip install -e '.[test]'` installs moto[server]")
        self.endpoint = f"http://127.0.0.1:{common.free_port()}"
        self.keys = {"AWS_ACCESS_KEY_ID": "bench" + secrets.token_hex(4),
                     "AWS_SECRET_ACCESS_KEY": secrets.token_hex(16)}
        port = self.endpoint.rsplit(":", 1)[1]
        self.process = common.Process([str(binary), "-H", "127.0.0.1", "-p", port], None,
                                      data_dir / "moto_server.log", url=self.endpoint)
        self.process.wait_ready(path="/moto-api/")
        self.client().create_bucket(Bucket=BUCKET)
        # rclone reads back the version its upload made, and moto refuses the versionId "null" of an
        # unversioned bucket (400).
        self.client().put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=self.keys["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=self.keys["AWS_SECRET_ACCESS_KEY"])

    def empty(self):
        """Delete every object and unfinished upload, untimed, so that the server holds one artifact at most."""
        client = self.client()
        versions = client.list_object_versions(Bucket=BUCKET)
        for found in versions.get("Versions", []) + versions.get("DeleteMarkers", []):
            client.delete_object(Bucket=BUCKET, Key=found["Key"], VersionId=found["VersionId"])
        for upload in client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []):
            client.abort_multipart_upload(Bucket=BUCKET, Key=upload["Key"], UploadId=upload["UploadId"])

    def size_of(self, key_part):
        return sum(found["Size"] for found in self.client().list_objects_v2(Bucket=BUCKET).get("Contents", [])
                   if key_part in found["Key"] and not found["Key"].endswith(".json"))

    def rclone_env(self):
        remote = "RCLONE_CONFIG_BENCHS3_"
        return {remote + "TYPE": "s3", remote + "PROVIDER": "Other", remote + "ENDPOINT": self.endpoint,
                remote + "REGION": "us-east-1", remote + "FORCE_PATH_STYLE": "true",
                remote + "ACCESS_KEY_ID": self.keys["AWS_ACCESS_KEY_ID"],
                remote + "SECRET_ACCESS_KEY": self.keys["AWS_SECRET_ACCESS_KEY"]}


def plain(source, s3):
    """The baseline pipeline; returns (seconds, stored bytes, command)."""
    command = (f'tar -cf - -C "{source.parent}" "{source.name}" | zstd -q | '
               f"rclone rcat benchs3:{BUCKET}/plain.tar.zst")
    # The AWS SDK inside rclone refuses an AWS_CA_BUNDLE with its own HTTP transport: its remote needs none.
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")} | s3.rclone_env()
    started = time.monotonic()
    subprocess.run(["bash", "-o", "pipefail", "-c", command], check=True, env=env)
    seconds = time.monotonic() - started
    size = s3.size_of("plain.tar.zst")
    s3.empty()
    return seconds, size, command


class Backhook:
    """gunicorn + worker on one database, with one job whose destination is the loopback bucket."""

    def __init__(self, data_dir, source, s3, age=False):
        common.init_database(data_dir)
        encryption = ("--encrypt-to", backup_age.age_recipient(data_dir)) if age else ()
        job = common.add_job(data_dir, "bench-offsite", f"files://{source}", data_dir / "unused", *encryption)
        destination = f"s3://{BUCKET}/offsite?endpoint={s3.endpoint}&region=us-east-1"
        with common.transaction(data_dir) as db:
            db.execute("UPDATE job SET destination = ? WHERE id = ?", (destination, job))
            db.execute("UPDATE job_destination SET destination = ? WHERE job_id = ?", (destination, job))
        self.job, self.s3 = job, s3
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {common.api_key(data_dir)}"
        self.env = common.backhook_env(data_dir, **s3.keys, AWS_CONFIG_FILE="/nonexistent",
                                       AWS_SHARED_CREDENTIALS_FILE="/nonexistent")
        self.db = common.connect(data_dir)

    def backup(self, web, worker):
        """Trigger and wait; return (seconds, stored bytes, peak tree RSS MB)."""
        sampler = backup_speed.RssSampler(worker.pid)
        sampler.start()
        seconds, status, size, error, _ = common.trigger_and_wait(self.http, web.url, self.job, self.db)
        peak = sampler.stop()
        if status != "Success":
            raise RuntimeError(f"backhook off-site backup ended {status}: {error}")
        self.s3.empty()
        return seconds, size, peak


def main(argv=()):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.size_arguments(parser, "the directory backed up")
    parser.add_argument("--age", action="store_true", help="backhook's job encrypts to an age key too")
    args = parser.parse_args(argv)
    for tool in ("zstd", "rclone") + (("age", "age-keygen") if args.age else ()):
        common.require_tool(tool, "age" if tool.startswith("age") else None)
    _, source = backup_speed.sources(args.size_mb)
    data_dir = common.fresh_dir("offsite")
    s3 = LoopbackS3(data_dir)
    runs = {"plain": [], "backhook": []}
    backhook = Backhook(data_dir, source, s3, age=args.age)
    web, worker = common.serve(backhook.env), common.worker(backhook.env)
    try:
        backhook.backup(web, worker)  # untimed: the worker's first S3 destination imports boto3, moto warms up
        for round_number in range(args.rounds):
            backup_speed.warm(source)
            *measured, command = plain(source, s3)
            runs["plain"].append(measured)
            backup_speed.warm(source)
            runs["backhook"].append(backhook.backup(web, worker))
            for who in runs:
                seconds, size = runs[who][-1][:2]
                print(f"round {round_number + 1} {who:8} {seconds:6.2f} s "
                      f"{backup_speed.size_of(source) / seconds / 1e6:7.1f} MB/s  → {size / 1e6:.1f} MB", flush=True)
        worker_hwm = common.rss_mb(worker.pid, "VmHWM")
    finally:
        for process in (worker, web, s3.process):
            process.stop()
    section = report(runs, backup_speed.size_of(source), command, worker_hwm, args)
    print(section)
    return section


def report(runs, source_bytes, command, worker_hwm, args):
    plain_s = common.median([run[0] for run in runs["plain"]])
    own_s = common.median([run[0] for run in runs["backhook"]])
    ratio, peak = plain_s / own_s, max(run[2] for run in runs["backhook"])
    target = TARGET_AGE_RATIO if args.age else TARGET_RATIO
    rss_met = max(peak, worker_hwm) < TARGET_RSS_MB
    row = [f"{source_bytes / 1e6:.0f}", f"{source_bytes / plain_s / 1e6:.1f}", f"{runs['plain'][0][1] / 1e6:.1f}",
           f"{source_bytes / own_s / 1e6:.1f}", f"{runs['backhook'][0][1] / 1e6:.1f}", f"**{ratio:.2f}×**",
           common.verdict(ratio >= target)]
    return "\n".join([
        "## Off-site speed and memory (S3" + (", age on)" if args.age else ")"),
        "",
        f"A directory of {args.size_mb} MB (bench/backup_speed.py's tree), read into the page cache before each "
        f"run, {args.rounds} alternating rounds, medians, to moto_server on loopback. backhook: trigger → Success "
        f"through `backhook serve` and `backhook worker`, zstd{' and age' if args.age else ''}, one s3:// "
        "destination (upload and verifying re-read).",
        "",
        common.table(["MB", "plain MB/s", "plain stored MB", "backhook MB/s", "backhook stored MB", "ratio",
                      f"≥ {target}×"], [row]),
        "",
        f"- Plain: `{command}` (rclone's S3 remote from RCLONE_CONFIG_BENCHS3_* variables)",
        f"- Peak RSS of the worker's process tree (sampled every 20 ms): **{peak:.0f} MB**; the worker's own "
        f"VmHWM: **{worker_hwm:.0f} MB** (target < {TARGET_RSS_MB} MB): {common.verdict(rss_met)}",
        f"- Verdict: {common.verdict(ratio >= target and rss_met)}",
    ])


if __name__ == "__main__":
    common.run_standalone(main)
