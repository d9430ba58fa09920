"""The webhook benchmark's baseline: a bare Flask "hello" app, served like backhook.

It answers every path and method, so wrk sends it the very same requests as
the real webhook route; it reads neither headers nor body.
"""
from flask import Flask

app = Flask(__name__)


@app.route("/", defaults={"path": ""}, methods=["GET", "POST"])
@app.route("/<path:path>", methods=["GET", "POST"])
def hello(path):
    return "Hello, World!"
