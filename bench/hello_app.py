"""The baseline for bench/webhooks.py: a bare Flask "hello" route."""
from flask import Flask

app = Flask(__name__)


@app.route("/hello", methods=["GET", "POST"])
def hello():
    return {"success": True}
