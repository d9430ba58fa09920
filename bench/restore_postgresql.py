"""PostgreSQL restore speed and memory: `backhook restore` of a pg_dump backup vs `zstd -dc | psql`.

A source database of about --size-mb of plain dump (one table with a primary
key and an index, generated once on the local server and reused) is backed up
once with `backhook jobs run --wait` (zstd). Then, alternating, in the same
run, each into a new empty database created untimed:

    zstd -dc ARTIFACT | psql -X -q -v ON_ERROR_STOP=1 --single-transaction -d TARGET

against `backhook restore EXECUTION_ID --to postgresql://…/TARGET` with
`backhook worker` running, timed as restore_speed.py times it (command start
to the execution's Success in the database). Each target is dropped
afterwards, untimed.

While backhook restores, the RSS of the worker and all its children (psql
included; the server's processes are not the worker's) is sampled every 20 ms.

Targets (README.md, "Performance targets"): time >= 0.8x the stock pipeline's;
peak RSS of the worker's tree < 150 MB.

    .venv/bin/python bench/restore_postgresql.py [--size-mb 1024] [--rounds 3] [--quick]
"""
import argparse
import subprocess
import time

import common
import restore_speed

TARGET_RATIO, TARGET_RSS_MB = 0.8, 150
SERVER = "postgres@127.0.0.1:5432"
ROW_BYTES = 200  # about what one generated row takes in the plain dump


def psql(database, sql):
    subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", f"--dbname=postgresql://{SERVER}/{database}",
                    "-c", sql], check=True, capture_output=True)


def source_database(size_mb):
    """The source's name, generated on first use; a comment on the database says it is complete."""
    name = f"bench_restore_src_{size_mb}mb"
    done = subprocess.run(["psql", "-X", "-At", f"--dbname=postgresql://{SERVER}/postgres", "-c",
                           f"SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = '{name}'"],
                          check=True, capture_output=True, text=True).stdout.strip()
    if done != "complete":
        print(f"generating a {size_mb} MB PostgreSQL source {name} (reused later) …", flush=True)
        psql("postgres", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        psql("postgres", f"CREATE DATABASE {name}")
        rows = size_mb * 1_000_000 // ROW_BYTES
        psql(name, "CREATE TABLE item (id bigint PRIMARY KEY, name text, payload text, made timestamptz);"
                   f"INSERT INTO item SELECT g, 'item ' || g, repeat(md5(g::text), 5), "
                   f"'2026-01-01'::timestamptz + g * interval '1 second' FROM generate_series(1, {rows}) g;"
                   "CREATE INDEX item_name ON item (name);")
        psql("postgres", f"COMMENT ON DATABASE {name} IS 'complete'")
    return name


def target_database(name):
    psql("postgres", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    psql("postgres", f"CREATE DATABASE {name}")


def plain_size(artifact):
    with subprocess.Popen(["zstd", "-dc", str(artifact)], stdout=subprocess.PIPE) as plain:
        size = sum(len(chunk) for chunk in iter(lambda: plain.stdout.read(1 << 20), b""))
    return size


def stock(artifact, target):
    command = (f'zstd -dc "{artifact}" | psql -X -q -v ON_ERROR_STOP=1 --single-transaction '
               f'-d "postgresql://{SERVER}/{target}" > /dev/null')
    started = time.monotonic()
    subprocess.run(["bash", "-o", "pipefail", "-c", command], check=True)
    return time.monotonic() - started, command


def main(argv=()):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.size_arguments(parser, "the source's plain dump")
    args = parser.parse_args(argv)
    for tool in ("zstd", "psql", "pg_dump"):
        common.require_tool(tool)

    source = source_database(args.size_mb)
    target = f"bench_restore_target_{args.size_mb}mb"
    data_dir = common.fresh_dir("restore-postgresql")
    backhook = restore_speed.Backhook(data_dir, {"postgresql": f"{SERVER}/{source}"})
    worker = common.worker(backhook.env)
    runs = {"stock": [], "backhook": []}
    try:
        backhook.back_up(worker)
        artifact = backhook.backups["postgresql"][1]
        dump_bytes = plain_size(artifact)
        for round_number in range(args.rounds):
            target_database(target)
            restore_speed.warm(artifact)
            seconds, command = stock(artifact, target)
            runs["stock"].append((seconds, None, None))
            target_database(target)
            restore_speed.warm(artifact)
            runs["backhook"].append(backhook.restore("postgresql", f"{SERVER}/{target}", worker))
            for who in ("stock", "backhook"):
                seconds = runs[who][-1][0]
                print(f"round {round_number + 1} {who:8} {seconds:6.2f} s {dump_bytes / seconds / 1e6:7.1f} MB/s",
                      flush=True)
        worker_hwm = common.rss_mb(worker.pid, "VmHWM")
    finally:
        worker.stop()
        psql("postgres", f"DROP DATABASE IF EXISTS {target} WITH (FORCE)")
    section = report(runs, dump_bytes, command, worker_hwm, args)
    print(section)
    return section


def report(runs, dump_bytes, command, worker_hwm, args):
    stock_s = common.median([run[0] for run in runs["stock"]])
    own_s = common.median([run[0] for run in runs["backhook"]])
    worker_s = common.median([run[2] for run in runs["backhook"]])
    ratio = stock_s / own_s
    peak = max(run[1] for run in runs["backhook"])
    rss_met = max(peak, worker_hwm) < TARGET_RSS_MB
    row = [f"{dump_bytes / 1e6:.0f}", f"{stock_s:.2f}", f"{own_s:.2f}", f"{worker_s:.2f}",
           f"{dump_bytes / own_s / 1e6:.1f}", f"**{ratio:.2f}×**", common.verdict(ratio >= TARGET_RATIO)]
    return "\n".join([
        "## PostgreSQL restore speed and memory",
        "",
        f"A pg_dump backup of {dump_bytes / 1e6:.0f} MB of plain SQL (one table, primary key and an index), "
        f"zstd; {args.rounds} alternating rounds into a new empty database, medians. backhook: "
        "`backhook restore ID --to postgresql://…` → Success, with `backhook worker` running.",
        "",
        common.table(["dump MB", "stock s", "backhook s", "of which the worker s", "backhook MB/s", "ratio",
                      f"≥ {TARGET_RATIO}×"], [row]),
        "",
        f"- Stock: `{command}`",
        f"- Peak RSS of the worker's process tree, psql included (sampled every 20 ms): **{peak:.0f} MB**; "
        f"the worker's own VmHWM: **{worker_hwm:.0f} MB** (target < {TARGET_RSS_MB} MB): {common.verdict(rss_met)}",
        f"- Verdict: {common.verdict(ratio >= TARGET_RATIO and rss_met)}",
    ])


if __name__ == "__main__":
    common.run_standalone(main)
