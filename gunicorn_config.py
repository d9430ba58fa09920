"""gunicorn settings for `backhook serve` and `backhook run`, loaded with `--config file:…/gunicorn_config.py`.

gunicorn refuses some requests before the app sees them (a request line or a
header too large, malformed HTTP) and answers those with an HTML page. Every
backhook error is JSON {"error": "..."}, so its refusals are rewritten as JSON.
"""
import json
import os

from gunicorn import util

# The most gunicorn accepts, so that long ids reach the app and get its JSON 404.
limit_request_line = 8190


def write_json_error(sock, status_int, reason, mesg):
    from routes import API_HEADERS  # here, in the worker that loaded the app: not while gunicorn reads this file

    body = json.dumps({"error": f"{reason}: {mesg}" if mesg else reason})
    util.write_nonblock(sock, (
        f"HTTP/1.1 {status_int} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        + "".join(f"{name}: {value}\r\n" for name, value in API_HEADERS)
        + f"Content-Length: {len(body)}\r\n"
        f"\r\n{body}").encode("latin-1"))


util.write_error = write_json_error


def on_starting(server):
    import config  # importable once gunicorn has applied --pythonpath, just before this hook

    os.umask(config.UMASK)  # before any process forks, so every file the web processes create is private
