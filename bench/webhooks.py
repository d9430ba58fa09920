"""Webhook intake: POST /webhooks/backup-progress against a bare Flask hello route.

Both apps run under the same gunicorn settings: backhook through `backhook
serve`, the hello app under the very command line that `serve` runs, with
its default process count. backhook's worker runs beside
the webhook server, as under `backhook run`: it checkpoints SQLite's
write-ahead log, which the web processes leave to it. wrk sends both the very
same requests: progress webhooks whose bodies vary over 50 registered sites
and 2,000 backup ids. The runs alternate, hello then webhook, for several rounds.

Target (README.md, "Performance targets"): webhook req/s >= 0.6x hello, 0 errors, p99 <= 25 ms at 16 connections.

    .venv/bin/python bench/webhooks.py [--rounds 5] [--seconds 6] [--processes N] [--quick]
"""
import argparse

import common

PATH = "/webhooks/backup-progress"
SITES, BACKUP_IDS = 50, 2000
TARGET_RATIO, TARGET_P99_MS = 0.6, 25.0


def measure(server, seconds, connections):
    """wrk's summary, plus the server's CPU time per request (µs): the figure the machine's noise moves least."""
    cpu_before = common.tree_cpu_seconds(server.pid)
    result = common.wrk(server.url + PATH, seconds, connections, mode="webhook", token=common.TOKEN,
                        sites=SITES, backup_ids=BACKUP_IDS)
    result["cpu_us"] = (common.tree_cpu_seconds(server.pid) - cpu_before) / max(result["requests"], 1) * 1e6
    return result


def round_arguments(argv, description, rounds, seconds):
    """The options of the benchmarks that run wrk in alternating rounds (this one, webhook_floor.py)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--seconds", type=int, default=seconds)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--processes", type=int, default=None,
                        help="gunicorn processes of every app (default: that of `backhook serve`)")
    parser.add_argument("--quick", action="store_true", help="1 round of 1 s: checks the harness only")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds = 1, 1
    return args


def sites_database(name):
    """A fresh data directory whose database holds the SITES that wrk.lua posts for."""
    data_dir = common.fresh_dir(name)
    common.init_database(data_dir)
    common.add_websites(data_dir, SITES)
    return data_dir


def main(argv=()):
    args = round_arguments(argv, __doc__.split("\n")[0], 5, 6)
    data_dir = sites_database("webhooks")
    env = common.backhook_env(data_dir)
    args.processes = args.processes or common.default_processes(env)

    runs = {"hello": [], "webhook": []}
    with common.gunicorn(env, "bench.hello_app:app", args.processes, name="hello") as hello, \
            common.serve(env, args.processes, name="webhook") as webhook, \
            common.worker(env):
        servers = {"hello": hello, "webhook": webhook}
        for server in servers.values():  # imports, connections, first pages: not measured
            measure(server, 1 if args.quick else 2, args.connections)
        for round_number in range(args.rounds):
            for name, server in servers.items():
                result = measure(server, args.seconds, args.connections)
                runs[name].append(result)
                print(f"round {round_number + 1} {name:8} {result['rps']:8.0f} req/s  "
                      f"p50 {result['p50_ms']:.2f} ms  p99 {result['p99_ms']:.2f} ms  "
                      f"errors {result['errors']}  server CPU {result['cpu_us']:.0f} µs/request", flush=True)

    section = report(runs, args)
    print(section)
    return section


def report(runs, args):
    hello_rps = common.median([run["rps"] for run in runs["hello"]])
    webhook_rps = common.median([run["rps"] for run in runs["webhook"]])
    ratio = webhook_rps / hello_rps
    errors = sum(run["errors"] for run in runs["webhook"])
    worst_p99 = max(run["p99_ms"] for run in runs["webhook"])
    rows = []
    for name in ("hello", "webhook"):
        rows.append([name, " / ".join(f"{run['rps']:.0f}" for run in runs[name]),
                     f"{common.median([run['rps'] for run in runs[name]]):.0f}",
                     f"{common.median([run['p50_ms'] for run in runs[name]]):.2f}",
                     f"{max(run['p99_ms'] for run in runs[name]):.2f}",
                     sum(run["errors"] for run in runs[name]),
                     f"{common.median([run['cpu_us'] for run in runs[name]]):.0f}"])
    met = ratio >= TARGET_RATIO and errors == 0 and worst_p99 <= TARGET_P99_MS
    return "\n".join([
        "## Webhook intake",
        "",
        f"`POST {PATH}` vs a bare Flask hello route, both under the gunicorn command of `backhook serve` with "
        f"{args.processes} sync processes, backhook's worker running beside them; wrk, {args.connections} connections, 2 threads, "
        f"{args.rounds} alternating rounds of {args.seconds} s; bodies over {SITES} sites and "
        f"{BACKUP_IDS} backup ids.",
        "",
        common.table(["app", "req/s per round", "median req/s", "p50 ms", "worst p99 ms", "errors",
                      "server CPU µs/request"], rows),
        "",
        f"- Ratio webhook/hello: **{ratio:.2f}×** (target ≥ {TARGET_RATIO}×)",
        f"- Errors (non-2xx and socket): **{errors}** (target 0)",
        f"- p99, worst round: **{worst_p99:.2f} ms** (target ≤ {TARGET_P99_MS:.0f} ms)",
        f"- Verdict: {common.verdict(met)}",
        f"- wrk command: `{runs['webhook'][0]['command']}` with BENCH_MODE=webhook",
    ])


if __name__ == "__main__":
    common.run_standalone(main)
