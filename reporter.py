"""An attempt's stage, progress and log lines, and the bands that map its work onto 0-100."""
import logging
import threading
import time

from peewee import Node, OperationalError

import models
from models import Execution, now_ms
from statuses import ExecutionStatus, Stage

log = logging.getLogger("backhook.backup")

# Each stage owns a band of the global 0-100 progress (README.md, "Stages and progress"):
# a backup's, and a restore's (whose Downloading is for remote destinations only).
BANDS = {
    Stage.INITIALIZING: (0, 5),
    Stage.DUMPING: (5, 60),
    Stage.UPLOADING: (60, 85),
    Stage.VERIFYING: (85, 95),
    Stage.APPLYING_RETENTION: (95, 100),
}
RESTORE_BANDS = {
    Stage.INITIALIZING: (0, 5),
    Stage.DOWNLOADING: (5, 30),
    Stage.VERIFYING: (30, 40),
    Stage.RESTORING: (40, 90),
    Stage.CHECKING: (90, 100),
}
# A wpsec:// run's: the plugin's backup takes it to 95 (remote_backups.REMOTE_BAND), and copying that
# backup home (homecopy.py), when the plugin lists it for download, the rest.
WPSEC_BANDS = {
    Stage.REQUESTING: (0, 5),
    Stage.REMOTE_BACKUP: (5, 95),
    Stage.SYNCING: (95, 95),
    Stage.DOWNLOADING: (95, 98),
    Stage.UPLOADING: (98, 98),
    Stage.VERIFYING: (98, 99),
    Stage.APPLYING_RETENTION: (99, 100),
}
FLUSH_INTERVAL = 1.0        # seconds between progress/log writes of one execution
UNKNOWN_SIZE_SCALE = 256 * 1024 * 1024  # bytes at which an unsized dump shows half its band
FINISH_PATIENCE_SECONDS = 300  # how long a locked database may delay an attempt's final state


def band_start(stage, bands=BANDS):
    return bands[stage][0]


def band_end(stage, bands=BANDS):
    return bands[stage][1]


def band_progress(stage, fraction, bands=BANDS):
    """The global progress `fraction` (0 to 1) of the way through `stage`'s band."""
    low, high = bands[stage]
    return low + (high - low) * fraction


def dump_fraction(raw_bytes, size_hint):
    """How far a dump of `raw_bytes` has come: never 1 before it ends, and never backwards.

    With a size hint, the share of it (a source can grow while it is dumped,
    hence the cap); without one, a curve that reaches half at UNKNOWN_SIZE_SCALE.
    """
    if size_hint:
        return min(raw_bytes / size_hint, 0.99)
    return 1 - 0.5 ** (raw_bytes / UNKNOWN_SIZE_SCALE)


class Reporter:
    """An attempt's stage, progress and log lines, written by a heartbeat thread once a second.

    The attempt's own thread only changes them in memory, so a locked database
    never stalls the dump, and a tool that prints nothing for an hour still
    has its stage and progress written while it runs (issue 12). Every write
    is a transition guarded on this attempt still holding the execution in the
    status it last wrote; `on_lost` is called when a write finds it taken over.
    """

    def __init__(self, execution, worker_id, secrets, on_lost, bands=BANDS):
        self.execution_id, self.owner = execution.id, (worker_id, execution.attempts)
        self.bands = bands
        self.secrets, self.on_lost = secrets, on_lost
        self.status = ExecutionStatus.RUNNING
        self.stage, self.progress = execution.stage, execution.progress
        self.lines, self.changed = [], False
        self.state_lock = threading.Lock()  # the attempt's thread changes, the heartbeat reads
        self.write_lock = threading.Lock()  # one write at a time, in order
        self.closed = threading.Event()
        self.heartbeat = threading.Thread(target=self.beat, name=f"report-{execution.id}", daemon=True)

    def scrub(self, text):
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def hide(self, *secrets):
        """Scrub these too from every message from now on (a signed download URL's query)."""
        self.secrets = sorted({*self.secrets, *filter(None, secrets)}, key=len, reverse=True)

    def log(self, message, level="info"):
        message = self.scrub(message)
        log.log(logging.WARNING if level != "info" else logging.INFO, "%s: %s", self.execution_id, message)
        with self.state_lock:
            self.lines.append({"timestamp": now_ms(), "level": level, "stage": self.stage, "message": message})
            self.changed = True

    def advance(self, stage=None, progress=None):
        with self.state_lock:
            if stage is not None and stage != self.stage:
                self.stage, self.changed = stage, True
            if progress is not None and int(progress) > self.progress:  # never backwards
                self.progress, self.changed = int(progress), True

    def enter(self, stage):
        """Move to `stage`, at the start of its band."""
        self.advance(stage=stage, progress=band_start(stage, self.bands))

    # --- writing

    def start(self):
        self.heartbeat.start()

    def beat(self):
        try:
            while not self.closed.wait(FLUSH_INTERVAL):
                self.flush()
        finally:
            models.database.close()  # this thread's connection

    def flush(self):
        """Write what changed since the last write; a locked database only delays it."""
        with self.write_lock:
            if self.closed.is_set():
                return
            with self.state_lock:
                if not self.changed:
                    return
                fields, lines = dict(stage=self.stage, progress=self.progress), self.lines
                self.lines, self.changed = [], False
            try:
                written = self.write(fields, lines)
            except OperationalError as exc:
                log.warning("%s: progress not written yet, database unavailable: %s", self.execution_id, exc)
                with self.state_lock:
                    self.lines[:0], self.changed = lines, True
                return
        if not written:
            self.on_lost()

    def record(self, also=None, **fields):
        """Write `fields` now, with everything so far; False if the attempt no longer holds the execution.

        A locked database delays it; it is retried, not lost. If the lock
        outlasts the lease and another worker takes the execution over, this
        write then finds the row no longer ours. A write that failed after it
        committed (a connection lost at COMMIT) is recognised on the retry.
        `also()` writes more rows in the same transaction, when it writes.
        """
        delay, deadline, retried = 0.05, time.monotonic() + FINISH_PATIENCE_SECONDS, False
        with self.write_lock:
            with self.state_lock:
                self.stage = fields.get("stage", self.stage)
                self.progress = max(self.progress, fields.get("progress", self.progress))
                fields = dict(stage=self.stage, progress=self.progress) | fields
                lines, self.lines, self.changed = self.lines, [], False
            while True:
                try:
                    written = self.write(fields, lines, also) or (retried and self.shows(fields))
                    break
                except OperationalError as exc:
                    if time.monotonic() > deadline:
                        raise
                    log.warning("%s: state not written yet, database unavailable: %s", self.execution_id, exc)
                    time.sleep(delay)
                    delay, retried = min(delay * 2, 1.0), True
            if written:
                self.status = fields.get("status", self.status)
            return written

    def finish(self, **fields):
        """The attempt's last write: stops the heartbeat, then `record`s."""
        self.closed.set()
        return self.record(**fields)

    def close(self):
        self.closed.set()
        if self.heartbeat.is_alive():
            self.heartbeat.join()

    def write(self, fields, lines, also=None):
        with models.database.atomic():
            written = Execution.transition(self.execution_id, self.status, fields, owner=self.owner, logs=lines)
            if written and also is not None:
                also()
            return written

    def shows(self, fields):
        """Whether the row already holds `fields` (plain values only), as this attempt's write left it."""
        row = Execution.get_or_none(Execution.id == self.execution_id)
        plain = {name: value for name, value in fields.items() if not isinstance(value, Node)}
        return row is not None and all(getattr(row, name) == value for name, value in plain.items())
