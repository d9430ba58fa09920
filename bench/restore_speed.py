"""Restore speed and memory: `backhook restore` of a SQLite and a directory backup vs the stock pipelines.

The sources are backup_speed.py's (--size-mb each, generated once under
var/bench/ and reused). Each is backed up once with `backhook jobs run --wait`
(zstd). Then, alternating, in the same run:

    zstd -d -q ARTIFACT -o NEW.db                 (SQLite)
    zstd -dc ARTIFACT | tar -x -C NEW_DIR         (directory)

against `backhook restore EXECUTION_ID --to SRC` into a new target, with
`backhook worker` running: the time is from starting the command to the
execution's Success in the database (polled every 10 ms; the command's own
half-second progress poll is not counted), so it includes the CLI's start,
the pickup, the SHA-256 verification, the restore and its check. Both write a
new target; each is removed afterwards, untimed, and the artifact is read into
the page cache before each run.

While backhook restores, the RSS of the worker and all its children is sampled
every 20 ms from /proc; the worker's own peak is its VmHWM.

Targets (README.md, "Performance targets"): time >= 0.8x the stock pipeline's
speed; peak RSS of the worker's tree < 150 MB.

    .venv/bin/python bench/restore_speed.py [--size-mb 1024] [--rounds 3] [--only files] [--quick]
"""
import argparse
import shutil
import subprocess
import time

import backup_speed
import common

TARGET_RATIO, TARGET_RSS_MB = 0.8, 150


def warm(path):
    """The artifact in the page cache for every contender (see backup_speed.warm)."""
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)


def stock(kind, artifact, target):
    """Run the stock pipeline into a new target; return (seconds, command)."""
    if kind == "sqlite":
        command = f'zstd -d -q -f "{artifact}" -o "{target}"'
    else:
        command = f'mkdir "{target}" && zstd -dc "{artifact}" | tar -x -C "{target}"'
    started = time.monotonic()
    subprocess.run(["bash", "-o", "pipefail", "-c", command], check=True)
    return time.monotonic() - started, command


def remove(path):
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
        for leftover in path.parent.glob(f"{path.name}.before-restore-*"):
            leftover.unlink()


class Backhook:
    """A worker and one backed-up job per source; restores through `backhook restore`."""

    def __init__(self, data_dir, sources):
        common.init_database(data_dir)
        self.data_dir, self.env = data_dir, common.backhook_env(data_dir)
        self.db = common.connect(data_dir)
        self.jobs = {kind: common.add_job(data_dir, f"bench-{kind}", f"{kind}://{path}", data_dir / "backups")
                     for kind, path in sources.items()}
        self.backups = {}

    def back_up(self, worker):
        for kind, job in self.jobs.items():
            common.backhook(self.data_dir, "jobs", "run", job, "--wait")
            self.backups[kind] = self.db.execute(
                "SELECT id, path FROM execution WHERE job_id = ? AND type = 'Backup' AND status = 'Success'",
                (job,)).fetchone()

    def restore(self, kind, target, worker):
        """Restore into `target`; return (seconds, peak tree RSS MB, the worker's own seconds)."""
        execution_id, _path = self.backups[kind]
        sampler = backup_speed.RssSampler(worker.pid)
        sampler.start()
        started = time.monotonic()
        command = subprocess.Popen([common.backhook_executable(), "restore", execution_id, "--to",
                                    f"{kind}://{target}"], env=self.env, cwd=common.PROJECT,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        queued = command.stdout.readline()  # "queued restore ID of backup ID"
        if not queued.startswith("queued restore "):
            raise RuntimeError(f"backhook restore failed:\n{queued}{command.communicate()[0]}")
        restore_id = queued.split()[2]
        while True:
            status, error, duration = self.db.execute(
                "SELECT status, error, ended_at - started_at FROM execution WHERE id = ?", (restore_id,)).fetchone()
            if status in ("Success", "Failed", "Cancelled"):
                break
            time.sleep(0.01)
        seconds = time.monotonic() - started
        peak = sampler.stop()
        output = command.communicate(timeout=30)[0]
        if status != "Success":
            raise RuntimeError(f"backhook {kind} restore ended {status}: {error}\n{output}")
        return seconds, peak, duration / 1000


def main(argv=()):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.size_arguments(parser, "each source")
    parser.add_argument("--only", choices=("sqlite", "files"), help="measure one source kind")
    args = parser.parse_args(argv)
    common.require_tool("zstd")
    common.require_tool("tar")

    sqlite_source, files_source = backup_speed.sources(args.size_mb)
    sources = {kind: path for kind, path in (("sqlite", sqlite_source), ("files", files_source))
               if args.only in (None, kind)}
    data_dir = common.fresh_dir("restore")
    backhook = Backhook(data_dir, sources)
    worker = common.worker(backhook.env)
    runs = {(who, kind): [] for who in ("stock", "backhook") for kind in sources}
    commands = {}
    try:
        backhook.back_up(worker)
        for round_number in range(args.rounds):
            for kind in sources:
                artifact = backhook.backups[kind][1]
                target = data_dir / (f"target-{kind}.db" if kind == "sqlite" else f"target-{kind}")
                warm(artifact)
                seconds, commands[kind] = stock(kind, artifact, target)
                runs["stock", kind].append((seconds, None, None))
                remove(target)
                warm(artifact)
                runs["backhook", kind].append(backhook.restore(kind, target, worker))
                remove(target)
                for who in ("stock", "backhook"):
                    seconds = runs[who, kind][-1][0]
                    print(f"round {round_number + 1} {kind:6} {who:8} {seconds:6.2f} s "
                          f"{backup_speed.size_of(sources[kind]) / seconds / 1e6:7.1f} MB/s", flush=True)
        worker_hwm = common.rss_mb(worker.pid, "VmHWM")
    finally:
        worker.stop()
    section = report(runs, {kind: backup_speed.size_of(path) for kind, path in sources.items()}, commands,
                     worker_hwm, args)
    print(section)
    return section


def report(runs, sizes, commands, worker_hwm, args):
    rows, all_met, peak = [], True, 0.0
    for kind in sizes:
        stock_s = common.median([run[0] for run in runs["stock", kind]])
        own_s = common.median([run[0] for run in runs["backhook", kind]])
        worker_s = common.median([run[2] for run in runs["backhook", kind]])
        ratio = stock_s / own_s
        peak = max([peak] + [run[1] for run in runs["backhook", kind]])
        all_met &= ratio >= TARGET_RATIO
        rows.append([kind, f"{sizes[kind] / 1e6:.0f}", f"{stock_s:.2f}", f"{sizes[kind] / stock_s / 1e6:.1f}",
                     f"{own_s:.2f}", f"{worker_s:.2f}", f"{sizes[kind] / own_s / 1e6:.1f}", f"**{ratio:.2f}×**",
                     f"{stock_s / worker_s:.2f}×", common.verdict(ratio >= TARGET_RATIO)])
    rss_met = max(peak, worker_hwm) < TARGET_RSS_MB
    return "\n".join([
        "## Restore speed and memory",
        "",
        f"Sources of {args.size_mb} MB each (backup_speed.py's), backed up once with zstd; {args.rounds} "
        "alternating rounds into a new target, medians. backhook: `backhook restore ID --to SRC` → Success, "
        "with `backhook worker` running.",
        "",
        common.table(["source", "MB", "stock s", "stock MB/s", "backhook s", "of which the worker s",
                      "backhook MB/s", "ratio", "ratio, worker only", f"≥ {TARGET_RATIO}×"], rows),
        "",
        "MB/s is source bytes over wall time; the ratio is stock time / backhook time, the verdict's. \"Of which "
        "the worker\" is the execution's own duration (claim to end: verification, restore and check), without "
        "the command's start and the pickup.",
        "",
        *(f"- Stock {kind}: `{command}`" for kind, command in commands.items()),
        f"- Peak RSS of the worker's process tree (sampled every 20 ms): **{peak:.0f} MB**; "
        f"the worker's own VmHWM: **{worker_hwm:.0f} MB** (target < {TARGET_RSS_MB} MB): {common.verdict(rss_met)}",
        f"- Verdict: {common.verdict(all_met and rss_met)}",
    ])


if __name__ == "__main__":
    common.run_standalone(main)
