"""The reporter: band maths without a database, then batched, guarded writes on a real one."""
import pytest

import models
from models import Execution, ExecutionLog
from reporter import BANDS, UNKNOWN_SIZE_SCALE, Reporter, band_end, band_progress, band_start, dump_fraction
from statuses import ExecutionStatus, Stage


def test_the_bands_cover_0_to_100_in_stage_order_without_gaps():
    bands = list(BANDS.values())
    assert list(BANDS) == [Stage.INITIALIZING, Stage.DUMPING, Stage.UPLOADING, Stage.VERIFYING,
                           Stage.APPLYING_RETENTION]
    assert bands[0][0] == 0 and bands[-1][1] == 100
    assert all(previous[1] == following[0] for previous, following in zip(bands, bands[1:]))


def test_band_progress_maps_a_fraction_onto_the_stages_band():
    assert band_progress(Stage.DUMPING, 0) == band_start(Stage.DUMPING) == 5
    assert band_progress(Stage.DUMPING, 1) == band_end(Stage.DUMPING) == 60
    assert band_progress(Stage.DUMPING, 0.5) == 32.5
    assert band_progress(Stage.VERIFYING, 0.25) == 87.5


def test_a_sized_dump_never_reaches_the_end_of_its_band_before_it_ends():
    assert dump_fraction(0, 1000) == 0
    assert dump_fraction(500, 1000) == 0.5
    assert dump_fraction(1000, 1000) == dump_fraction(5000, 1000) == 0.99


def test_an_unsized_dump_shows_half_its_band_at_the_scale_and_always_moves_forward():
    assert dump_fraction(0, None) == 0
    assert dump_fraction(UNKNOWN_SIZE_SCALE, None) == pytest.approx(0.5)
    steps = [dump_fraction(n * UNKNOWN_SIZE_SCALE // 4, None) for n in range(40)]
    assert steps == sorted(steps) and steps[-1] < 1


@pytest.fixture
def running(make_job):
    """A Running execution held by worker w1, attempt 1."""
    job = make_job()
    with models.database.atomic():
        return Execution.create(job=job, status=ExecutionStatus.RUNNING, stage=Stage.INITIALIZING, progress=0,
                                worker_id="w1", attempts=1)


def reporter_of(execution, lost=None):
    lost = [] if lost is None else lost
    return Reporter(execution, "w1", ["s3cret"], on_lost=lambda: lost.append(True))


def test_a_flush_writes_the_stage_progress_and_scrubbed_lines_and_progress_never_goes_back(running):
    report = reporter_of(running)
    report.advance(stage=Stage.DUMPING, progress=20)
    report.advance(progress=10)
    report.log("connecting with s3cret")
    report.flush()
    row = Execution.get_by_id(running.id)
    assert (row.stage, row.progress) == (Stage.DUMPING, 20)
    lines = list(ExecutionLog.select().where(ExecutionLog.execution == running.id))
    assert [(line.stage, line.message) for line in lines] == [(Stage.DUMPING, "connecting with ***")]


def test_a_write_that_finds_the_execution_taken_over_says_so(running):
    lost = []
    report = reporter_of(running, lost)
    Execution.update(worker_id="w2").where(Execution.id == running.id).execute()
    report.enter(Stage.DUMPING)
    report.flush()
    assert lost == [True]
    assert report.record(status=ExecutionStatus.SUCCESS) is False
    assert Execution.get_by_id(running.id).status == ExecutionStatus.RUNNING


def test_the_final_record_writes_everything_and_the_reporter_follows_the_status(running):
    report = reporter_of(running)
    report.log("almost done")
    assert report.finish(status=ExecutionStatus.FAILED, stage=Stage.FAILED, error="no")
    row = Execution.get_by_id(running.id)
    assert (row.status, row.stage, row.error) == (ExecutionStatus.FAILED, Stage.FAILED, "no")
    assert report.status == ExecutionStatus.FAILED
    assert ExecutionLog.select().where(ExecutionLog.execution == running.id).count() == 1
    report.advance(progress=50)
    report.flush()  # closed: nothing more is written
    assert Execution.get_by_id(running.id).progress == 0
