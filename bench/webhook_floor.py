"""What bounds webhook intake: backhook's webhook against bare apps doing a part of its work.

All run under the same gunicorn settings as bench/webhooks.py, with backhook's
worker beside them, and get the very same wrk requests, in alternating rounds:

- hello: the baseline of the target (bench/hello_app.py);
- json, read, insert: bench/floor_app.py, which parses the body and then
  stores nothing, reads the site's id, or INSERTs one row in a transaction of
  its own;
- webhook: backhook's `POST /webhooks/backup-progress`, which reads the site
  and the backup, updates the backup and appends the event in one transaction.

`insert` is the least any webhook that is in the database when it is
acknowledged can cost here; RESULTS.md discusses the figures.

    .venv/bin/python bench/webhook_floor.py [--rounds 5] [--seconds 4] [--quick]
"""
import contextlib
import sqlite3

import common
import webhooks

FLOORS = ("json", "read", "insert")


def main(argv=()):
    args = webhooks.round_arguments(argv, __doc__.split("\n")[0], 5, 4)
    data_dir = webhooks.sites_database("webhook-floor")
    with sqlite3.connect(data_dir / "floor.db") as floor:
        floor.execute("CREATE TABLE event (id INTEGER PRIMARY KEY, payload TEXT NOT NULL)")
    env = common.backhook_env(data_dir)
    args.processes = args.processes or common.default_processes(env)

    with contextlib.ExitStack() as running:
        running.enter_context(common.worker(env))
        baselines = {"hello": (env, "bench.hello_app:app")}
        baselines |= {floor: (dict(env, BENCH_FLOOR=floor), "bench.floor_app:app") for floor in FLOORS}
        servers = {name: running.enter_context(common.gunicorn(app_env, app, args.processes, name=name))
                   for name, (app_env, app) in baselines.items()}
        servers["webhook"] = running.enter_context(common.serve(env, args.processes, name="webhook"))
        for server in servers.values():  # imports, connections, first pages: not measured
            webhooks.measure(server, 1 if args.quick else 2, args.connections)
        runs = {name: [] for name in servers}
        for _ in range(args.rounds):
            for name, server in servers.items():
                runs[name].append(webhooks.measure(server, args.seconds, args.connections))

    hello_rps = common.median([run["rps"] for run in runs["hello"]])
    rows = [[name, " / ".join(f"{run['rps']:.0f}" for run in results),
             f"{common.median([run['rps'] for run in results]) / hello_rps:.2f}×",
             f"{common.median([run['cpu_us'] for run in results]):.0f}",
             sum(run["errors"] for run in results)]
            for name, results in runs.items()]
    section = "\n".join([
        "## Webhook intake: the floors",
        "",
        f"`bench/webhook_floor.py --rounds {args.rounds} --seconds {args.seconds}`: "
        f"{args.connections} connections, {args.processes} gunicorn processes each.",
        "",
        common.table(["app", "req/s per round", "median / hello", "server CPU µs/request", "errors"], rows),
    ])
    print(section)
    return section


if __name__ == "__main__":
    common.run_standalone(main)
