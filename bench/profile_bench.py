"""Profile a benchmark scenario with py-spy and print where the time goes.

    .venv/bin/python bench/profile_bench.py webhook [--seconds 15]
    .venv/bin/python bench/profile_bench.py poll [--seconds 15]      # GET /api/executions/<id>, full scale database
    .venv/bin/python bench/profile_bench.py backup-sqlite|backup-files [--size-mb 1024]

The HTTP scenarios load gunicorn with wrk exactly as the benchmarks do and
sample one gunicorn worker; the backup scenarios sample the worker process
(all threads and children) during one backup. Raw stacks are kept in
var/bench/profiles/<scenario>.txt (py-spy's collapsed format).
"""
import argparse
import collections
import signal
import subprocess
import sys
import time

import common

PROFILES = common.WORK / "profiles"


def py_spy():
    """The py-spy executable of this virtualenv, installed on first use (bench only)."""
    path = common.Path(sys.executable).with_name("py-spy")
    if not path.exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "py-spy"], check=True)
    return str(path)


def record(pid, seconds, out, subprocesses=False):
    command = [py_spy(), "record", "--format", "raw", "--output", str(out), "--rate", "250",
               "--duration", str(seconds), "--pid", str(pid), "--nonblocking"]
    return subprocess.Popen(command + (["--subprocesses"] if subprocesses else []),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarize(path, top=35):
    """Inclusive share of each frame (counted once per stack) and the leaf frames."""
    inclusive, leaf, total = collections.Counter(), collections.Counter(), 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames, count = stack.split(";"), int(count)
        total += count
        inclusive.update({frame: count for frame in set(frames)})
        leaf[frames[-1]] += count
    lines = [f"{total} samples; inclusive:"]
    lines += [f"{100 * n / total:5.1f}%  {frame}" for frame, n in inclusive.most_common(top)]
    lines += ["leaf (self time):"] + [f"{100 * n / total:5.1f}%  {frame}" for frame, n in leaf.most_common(15)]
    return "\n".join(lines)


def profile_http(data_dir, seconds, wrk_args):
    out = PROFILES / f"{data_dir.name}.txt"
    path = wrk_args.pop("path", "")
    with common.serve(common.backhook_env(data_dir), name="profiled") as server:
        common.wrk(server.url + path, 2, **wrk_args)  # warm up
        worker = [pid for pid in common.descendants(server.pid) if pid != server.pid][0]
        spy = record(worker, seconds, out)
        result = common.wrk(server.url + path, seconds + 1, **wrk_args)
        spy.wait()
    print(f"{result['rps']:.0f} req/s, p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms")
    return out


def main(argv=()):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("scenario", choices=["webhook", "poll", "backup-sqlite", "backup-files"])
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--size-mb", type=int, default=1024)
    args = parser.parse_args(argv)
    PROFILES.mkdir(parents=True, exist_ok=True)

    if args.scenario == "webhook":
        import webhooks
        data_dir = webhooks.sites_database("profile-webhook")
        out = profile_http(data_dir, args.seconds, dict(
            path=webhooks.PATH, connections=16, mode="webhook", token=common.TOKEN,
            sites=webhooks.SITES, backup_ids=webhooks.BACKUP_IDS))
    elif args.scenario == "poll":
        import scale
        data_dir = common.fresh_dir("profile-poll")
        key = scale.full_database(data_dir, 1_000_000, 100_000)
        side = scale.Side("full", data_dir, key, 100_000, 500_000)
        out = profile_http(data_dir, args.seconds, dict(
            connections=1, threads=1, mode="paths", paths_file=side.paths["poll"], api_key=key))
    else:
        import backup_speed
        kind = args.scenario.split("-")[1]
        sqlite_source, files_source = backup_speed.sources(args.size_mb)
        data_dir = common.fresh_dir("profile-backup")
        backhook = backup_speed.Backhook(data_dir, sqlite_source, files_source)
        out = PROFILES / f"{args.scenario}.txt"
        with common.serve(backhook.env) as web, common.worker(backhook.env) as worker:
            time.sleep(1)
            spy = record(worker.pid, 600, out, subprocesses=True)
            seconds, size, peak, _cpu = backhook.backup(kind, web, worker)
            spy.send_signal(signal.SIGINT)  # like Ctrl-C: py-spy writes what it has and exits
            spy.wait()
        print(f"{kind}: {seconds:.2f} s, {size / 1e6:.1f} MB, peak RSS {peak:.0f} MB")
    print(summarize(out))


if __name__ == "__main__":
    common.run_standalone(main)
