"""The dashboard's job form: an HTML form's text fields to job_definition's values, and a job back to the form.

A form sends only text, so this module turns it into the values
`POST /api/jobs` takes (numbers, true/false, lists) and leaves every check to
job_definition: a field that is not a whole number goes on as the text it
is, and job_definition's own check refuses it with the API's message.

A source's password never goes back to the page. The edit form shows the
stored source as `shown_source` does (the password as ***); sent back
unchanged, it keeps the stored source, password included. A form refused for
another field shows what was typed, except a source holding a secret: the
field then shows the stored source again (empty on a new job) and asks for
the new one to be typed again.
"""
from dataclasses import dataclass, field

from compression import COMPRESSORS
from destinations import destination_texts
from job_definition import BY_COLUMN
from sources import shown_source, source_secrets

LISTS = ("destinations", "recipients", "excludes")     # one per line
COUNTS = ("keep", "keep_daily", "keep_weekly", "keep_monthly")  # empty: none
FLAGS = ("allow_partial_destinations", "one_file_system", "enabled")
TEXTS = ("name", "source", "compression", "schedule", "timezone")
TIMEOUT_UNITS = {"hours": 3600, "seconds": 1}
RETYPE_SOURCE = "type the new source again: a password is never sent back to the page"


@dataclass
class Form:
    """What the form's inputs show, by Job column, and the message beside each refused one."""
    fields: dict
    timeout_unit: str = "hours"
    errors: dict = field(default_factory=dict)
    compressors: tuple = tuple(COMPRESSORS)

    def refuse(self, invalid):
        """Show job_definition's Invalid beside its field (or above the form when it names none)."""
        self.errors[invalid.field.column if invalid.field else None] = invalid.message


def blank():
    """The new job form, showing each field's default."""
    fields = {column: "" for column in TEXTS + COUNTS + LISTS}
    fields.update(compression=BY_COLUMN["compression"].default, timezone=BY_COLUMN["timezone"].default,
                  timeout=str(BY_COLUMN["timeout_seconds"].default // 3600),
                  **{column: BY_COLUMN[column].default for column in FLAGS})
    return Form(fields)


def of_job(job):
    """The edit form of a stored job: its source as it may be shown, its lists one per line."""
    hours, seconds = divmod(job.timeout_seconds, 3600)
    fields = {
        "name": job.name, "source": shown_source(job.source), "compression": job.compression,
        "schedule": job.schedule or "", "timezone": job.timezone,
        **{column: "" if getattr(job, column) is None else str(getattr(job, column)) for column in COUNTS},
        "destinations": "\n".join(destination_texts(job)), "recipients": "\n".join(job.recipient_keys()),
        "excludes": "\n".join(job.exclude_patterns()),
        "timeout": str(hours if not seconds else job.timeout_seconds),
        **{column: getattr(job, column) for column in FLAGS},
    }
    return Form(fields, timeout_unit="seconds" if seconds else "hours")


def submitted(form):
    """The Form as the user filled it in (`form`: the request's form), to show again when it is refused."""
    fields = {column: form.get(column, "") for column in TEXTS + COUNTS + LISTS + ("timeout",)}
    fields.update({column: form.get(column) == "on" for column in FLAGS})
    unit = form.get("timeout_unit")
    return Form(fields, timeout_unit=unit if unit in TIMEOUT_UNITS else "hours")


def values(shown, job=None):
    """job_definition's values of a submitted Form, for `define` (job None) or `revise` of `job`."""
    fields = shown.fields
    given = {column: fields[column].strip() for column in ("name", "source", "compression", "timezone")}
    given["schedule"] = fields["schedule"].strip() or None
    given.update({column: lines(fields[column]) for column in LISTS})
    given.update({column: number(fields[column]) for column in COUNTS})
    given.update({column: fields[column] for column in FLAGS})
    timeout = number(fields["timeout"])
    given["timeout_seconds"] = timeout * TIMEOUT_UNITS[shown.timeout_unit] if isinstance(timeout, int) else timeout
    if job is None:  # left empty on a new job: the default, as a body without the field gets
        return {column: value for column, value in given.items()
                if not (column in ("timezone", "timeout_seconds") and value in ("", None))}
    del given["name"]  # shown, never sent: a job's name cannot change
    if given["source"] == shown_source(job.source):
        del given["source"]  # left as shown: the stored source, password and all
    return given


def hide_secrets(shown, job=None):
    """Never send a typed source's password back: show the stored one as shown, or nothing, and ask again."""
    typed = shown.fields["source"]
    if job is not None and typed.strip() == shown_source(job.source):
        return
    if any(source_secrets(typed.strip())):
        shown.fields["source"] = shown_source(job.source) if job is not None else ""
        shown.errors.setdefault("source", RETYPE_SOURCE)


def lines(text):
    return [line.strip() for line in text.splitlines() if line.strip()]


def number(text):
    """A whole number typed in a box as int, "" as None; anything else as typed, for job_definition to refuse."""
    text = text.strip()
    if not text:
        return None
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else text
