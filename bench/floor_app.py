"""The floors under the webhook: a bare Flask app doing one piece of a webhook's work, picked by BENCH_FLOOR.

- `json`: parse the body and answer, nothing stored.
- `read`: also find the site's id by domain in backhook's database (one read transaction).
- `insert`: also INSERT the body as one row of `floor.db` (table `event`, made by the bench
  script), in a transaction of its own.

Each is served exactly like backhook (bench/webhook_floor.py), so what separates
two of them is the cost of that piece under gunicorn with its processes sharing
one SQLite file.
"""
import json
import os
import sqlite3

from flask import Flask, request

FLOOR = os.environ["BENCH_FLOOR"]
DATA_DIR = os.environ["BACKHOOK_DATA_DIR"]
ACKNOWLEDGED = b'{"success":true}\n'

# The file each floor works on; the `json` floor opens none.
DATABASE_FILE = {"read": "backhook.db", "insert": "floor.db"}.get(FLOOR)

app = Flask(__name__)
connection = None


def database():
    """This process's one connection to DATABASE_FILE, opened on first use, with backhook's settings for SQLite."""
    global connection
    if connection is None:
        connection = sqlite3.connect(os.path.join(DATA_DIR, DATABASE_FILE), isolation_level=None, timeout=10)
        for pragma in ("journal_mode = wal", "synchronous = normal", "foreign_keys = 1"):
            connection.execute(f"PRAGMA {pragma}")
    return connection


@app.post("/webhooks/backup-progress")
def webhook_floor():
    body = json.loads(request.get_data())
    if FLOOR == "read":
        found = database().execute("SELECT id FROM website WHERE domain = ?", (body["domain"],))
        if found.fetchone() is None:
            return {"error": "Website not found"}, 404
    elif FLOOR == "insert":
        database().execute("INSERT INTO event (payload) VALUES (?)", (json.dumps(body),))
    return ACKNOWLEDGED, 200, {"Content-Type": "application/json"}

