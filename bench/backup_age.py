"""Backup speed with age encryption on: the same directory backup to a local directory, with and without age.

Two jobs on one source (backup_speed.py's directory tree, --size-mb), both
zstd to a local directory, one added with `--encrypt-to` an age key made
here by age-keygen; triggered with `POST /api/jobs/<id>/run` through `backhook
serve` and `backhook worker`, alternating, trigger -> Success as the client
sees it. The worker's process tree (age included) is sampled for RSS.

Target (SPEC "Off-site speed"): with age on, at least 0.7x the same backup without it; peak RSS < 150 MB.

    .venv/bin/python bench/backup_age.py [--size-mb 1024] [--rounds 3] [--quick]
"""
import argparse
import subprocess

import backup_speed
import common

TARGET_RATIO, TARGET_RSS_MB = 0.7, 150


def age_recipient(directory):
    identity = directory / "key.txt"
    subprocess.run(["age-keygen", "-o", str(identity)], check=True, capture_output=True)
    return subprocess.run(["age-keygen", "-y", str(identity)], check=True, capture_output=True,
                          text=True).stdout.strip()


def main(argv=()):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.size_arguments(parser, "the source tree")
    args = parser.parse_args(argv)
    common.require_tool("age")
    common.require_tool("age-keygen", "age")

    _sqlite_source, files_source = backup_speed.sources(args.size_mb)
    data_dir = common.fresh_dir("backup-age")
    bench = backup_speed.Backhook(data_dir, _sqlite_source, files_source)
    bench.jobs["age"] = common.add_job(data_dir, "bench-files-age", f"files://{files_source}", bench.destination,
                                       "--encrypt-to", age_recipient(data_dir))
    web, worker = common.serve(bench.env), common.worker(bench.env)
    runs = {"files": [], "age": []}
    try:
        for round_number in range(args.rounds):
            for kind in runs:
                backup_speed.warm(files_source)
                runs[kind].append(bench.backup(kind, web, worker))
                for artifact in bench.destination.rglob("*.age"):
                    artifact.unlink()
                seconds, size, peak, cpu = runs[kind][-1]
                print(f"round {round_number + 1} {kind:5} {seconds:6.2f} s "
                      f"{backup_speed.size_of(files_source) / seconds / 1e6:7.1f} MB/s  → {size / 1e6:.1f} MB  "
                      f"peak {peak:.0f} MB  CPU {cpu:.2f} s", flush=True)
    finally:
        for process in (worker, web):
            process.stop()
    size = backup_speed.size_of(files_source)
    rows, seconds = [], {}
    for kind, label in (("files", "zstd"), ("age", "zstd + age")):
        seconds[kind] = common.median([run[0] for run in runs[kind]])
        rows.append([label, f"{size / seconds[kind] / 1e6:.1f}", f"{runs[kind][0][1] / 1e6:.1f}",
                     f"{common.median([run[3] for run in runs[kind]]):.1f}",
                     f"{max(run[2] for run in runs[kind]):.0f}"])
    ratio = seconds["files"] / seconds["age"]
    peak = max(run[2] for run in runs["age"])
    met = ratio >= TARGET_RATIO and peak < TARGET_RSS_MB
    section = "\n".join([
        "## Backup speed with age on",
        "",
        f"A {size / 1e6:.0f} MB directory tree (backup_speed.py's), {args.rounds} alternating rounds, medians; "
        "trigger → Success through `backhook serve` and `backhook worker`, zstd, to a local directory.",
        "",
        common.table(["backup", "MB/s", "stored MB", "worker CPU s", "peak tree RSS MB"], rows),
        "",
        f"- With age: **{ratio:.2f}×** the speed without (target ≥ {TARGET_RATIO}×), peak RSS {peak:.0f} MB "
        f"(target < {TARGET_RSS_MB} MB)",
        f"- Verdict: {common.verdict(met)}",
    ])
    print(section)
    return section


if __name__ == "__main__":
    common.run_standalone(main)
