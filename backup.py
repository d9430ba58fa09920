"""One attempt at one backup execution: the stages, from the dump to retention.

The worker (worker.py) claims an execution and runs `Run.execute()` in a
thread of its own; what every attempt shares (stopping, tools, endings) is
attempt.Attempt's, which restore.Restore shares too.

The pieces it drives each live in a module of their own: the source's dumper
(sources.py) writes into a Pipeline (pipeline.py: compression.py, then the
sinks of sinks.py), tools.py runs the dumper's processes, reporter.py writes
the stage, progress and logs, and retention.py prunes.

Every write to the execution row is a guarded transition
(`Execution.transition`) on this attempt still holding it (same worker, same
attempt, the status it left), so an attempt whose lease was taken over can
never overwrite its successor's state.

A backup is recorded Success as soon as its artifact is verified; retention
runs after that, and nothing in it can turn the backup back into a failure
(issue 12).
"""
import logging
import time

from peewee import OperationalError

import destinations
import homecopy
import manifest
import retention
from attempt import STOP_CAUSES, Attempt, Stopped, utc_stamp  # noqa: F401  (Stopped, utc_stamp: their old home)
from compression import compressor
from encryption import AgeEncryptor
from leases import MAX_ATTEMPTS
from models import ArtifactCopy, now_ms
from pipeline import Pipeline
from reporter import BANDS, WPSEC_BANDS, band_end, band_progress, band_start, dump_fraction
from sinks import MANIFEST
from sources import DUMPERS, BackupError, SourceError, shown_source, source_kind, source_secrets
from statuses import ExecutionStatus, Stage
from wpsec import follow_remote_backup

log = logging.getLogger("backhook.backup")


# --- one attempt -----------------------------------------------------------------------

class Run(Attempt):
    what = "backup"

    def __init__(self, execution, job, worker_id, deadline):
        try:
            self.kind = source_kind(job.source)
        except SourceError:
            self.kind = None  # perform() raises it again, where the attempt's ending reports it
        self.bands = WPSEC_BANDS if self.kind == "wpsec" else BANDS  # the reporter's, from Attempt.__init__ on
        # A wpsec:// backup's file is downloaded where any other backup is dumped (homecopy.py).
        self.dump_stage = Stage.DOWNLOADING if self.kind == "wpsec" else Stage.DUMPING
        super().__init__(execution, job, worker_id, deadline, source_secrets(job.source))
        self.size_hint = None
        self.recorded = None  # the artifact's location, once the execution is recorded Success with it

    # --- the interface dumpers use (see sources.py), besides Attempt's

    def dumped(self, raw_bytes):
        """Map dumped bytes onto the Dumping band; never reaches its end before the dump does."""
        self.report.advance(progress=band_progress(self.dump_stage, dump_fraction(raw_bytes, self.size_hint),
                                                   self.bands))

    # --- the stages

    def perform(self):
        job, execution, kind = self.job, self.execution, self.kind or source_kind(self.job.source)
        if kind == "wpsec":
            ending = follow_remote_backup(self)
            if ending and ending[0] != "home":
                raise Stopped(*ending)
            if ending:  # the plugin lists the finished backup for download: it comes home like any artifact
                self.enter(Stage.DOWNLOADING)
                self.store(homecopy.dumper(self), "storing the site's backup")
            return
        self.enter(Stage.INITIALIZING, f"attempt {execution.attempts} of {MAX_ATTEMPTS}")
        dumper = DUMPERS.get(kind)
        if dumper is None:
            raise BackupError(f"{kind}:// backups are not supported by this worker yet")
        self.store(dumper, f"backing up {'a command' if kind == 'command' else shown_source(job.source)}")

    def store(self, dumper, what):
        """From the dumper's stream to retention: store on every destination, verify, manifest, Success, prune."""
        job, execution = self.job, self.execution
        self.directory.mkdir(parents=True, exist_ok=True)  # the attempt's scratch files (Attempt.scratch_path)
        self.destinations = destinations.destination_texts(job)
        sinks = [destinations.sink_for(text, job, attempt=self) for text in self.destinations]
        self.shown = [sink.describe() for sink in sinks]
        recipients = job.recipient_keys()
        encryptor = AgeEncryptor(recipients, self.spawn) if recipients else None
        pipeline = Pipeline(compressor(job.compression), sinks, encryptor,
                            dropped=self.destination_failed if job.allow_partial_destinations else None)
        name = f"{self.stamp}-{execution.id}.{dumper.suffix}{pipeline.extension}"
        self.size_hint = dumper.estimate(job.source)
        encrypted = f", age-encrypted to {len(recipients)} recipient(s)" if recipients else ""
        self.log(f"{what} to {', '.join(self.shown)} ({job.compression}{encrypted})")

        self.dump_and_store(dumper, pipeline, name)
        try:
            self.enter(Stage.VERIFYING)
            size, sha256 = self.verify(pipeline)
            self.write_manifest(pipeline, name, size, sha256)
            self.record_success(pipeline, name, size, sha256)
        except BaseException:
            pipeline.abort()
            raise
        self.apply_retention()

    def destination_failed(self, position, sink, error):
        """--allow-partial-destinations: one destination failed; the backup goes on with the others."""
        self.log(f"destination {self.shown[position]} failed and is left out of this backup "
                 f"(--allow-partial-destinations): {error}", "error")

    def dump_and_store(self, dumper, pipeline, name):
        """Dumping and Uploading: stream the dump through the pipeline, make it durable, put it in place."""
        compression = self.job.compression
        self.enter(self.dump_stage)
        started = time.monotonic()
        pipeline.open(name, self)
        try:
            dumper.dump(self.job.source, self, pipeline)
            self.check()
            done = "downloaded" if self.dump_stage == Stage.DOWNLOADING else "dumped"
            self.log(f"{done} {pipeline.raw_bytes:,} bytes in {time.monotonic() - started:.1f} s")
            self.enter(Stage.UPLOADING)
            started = time.monotonic()
            size, _sha256 = pipeline.seal()
            pipeline.commit()
        except BaseException:
            pipeline.abort()
            raise
        self.log(f"stored {size:,} bytes ({compression}, {size / max(pipeline.raw_bytes, 1):.0%} of the dump); "
                 f"flushed to disk in {time.monotonic() - started:.1f} s")
        self.report.advance(progress=band_end(Stage.UPLOADING, self.bands))

    def verify(self, pipeline):
        def read_so_far(fraction):
            self.check()
            self.report.advance(progress=band_progress(Stage.VERIFYING, fraction, self.bands))

        size, sha256 = pipeline.verify(read_so_far)
        self.log(f"verified {size:,} bytes, sha256 {sha256}")
        return size, sha256

    def write_manifest(self, pipeline, name, size, sha256):
        """`<artifact>.json` beside the verified artifact; failing to write it fails the backup like any store."""
        self.check()
        document = manifest.manifest(self.job, self.execution.id, name, self.started_ms, pipeline.raw_bytes,
                                     size, sha256, destinations=[self.shown[at] for at, _ in pipeline.kept()])
        pipeline.write_manifest(manifest.encode(document))
        self.log(f"manifest written: {name}{MANIFEST}")

    def record_success(self, pipeline, name, size, sha256):
        """One guarded write makes the verified artifact the execution's: Success, before any pruning.

        Each verified copy becomes an ArtifactCopy in the same transaction;
        `path` is the first one's location. The lease stays held until
        retention ends, so a worker that dies while pruning leaves an
        execution the reclaim can complete.
        """
        self.check()
        kept = pipeline.kept()
        copies = [dict(execution=self.execution.id, position=position, destination=self.destinations[position],
                       location=artifact.location) for position, artifact in kept]
        self.log(f"backup complete: {name}, {size:,} bytes, on {', '.join(self.shown[at] for at, _ in kept)}")
        if not self.report.record(status=ExecutionStatus.SUCCESS, stage=Stage.APPLYING_RETENTION,
                                  progress=band_start(Stage.APPLYING_RETENTION, self.bands), ended_at=now_ms(),
                                  size=size, path=pipeline.location, sha256=sha256,
                                  also=lambda: ArtifactCopy.insert_many(copies).execute()):
            raise Stopped("lost")  # our lease lapsed and another worker owns the execution now
        self.recorded = pipeline.location

    def apply_retention(self):
        """Prune, then complete the execution; nothing here turns the recorded Success into a failure."""
        problem = None
        try:
            problem = retention.prune(self.job, self.execution.id, self.check, self.log)
        except Stopped as stop:
            if stop.reason == "lost":
                log.warning("execution %s: retention stopped, another worker completed the execution",
                            self.execution.id)
                return
            problem = f"retention stopped by {STOP_CAUSES[stop.reason]} before it finished"
        except Exception as exc:  # a locked database, a bug: the backup stands all the same
            log.exception("execution %s: retention failed", self.execution.id)
            problem = f"retention failed: {exc}"
        if problem:
            self.log(f"{problem}; the backup succeeded and the older backups not yet pruned are kept", "error")
        try:
            self.report.finish(stage=Stage.COMPLETED, progress=100, retention_error=problem,
                               worker_id=None, lease_expires_at=None)
        except OperationalError as exc:
            log.error("execution %s: Success recorded, its completion not written (the reclaim completes it): %s",
                      self.execution.id, exc)

    # --- endings

    def remove_partials(self):
        if self.recorded:
            return []  # the execution reports the artifact now: it is no partial file
        return super().remove_partials()
