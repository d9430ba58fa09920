"""events.py: what makes a webhook body, a spool line or a status answer an Event; no database needed."""
import dataclasses
import json

import pytest

from events import Event, InvalidEvent, polled_event, spool_record, spooled_event, webhook_event
from statuses import EventKind

KINDS = ["progress", "complete", "failed"]
BODY = {"domain": "example.com", "backup_id": "backup_1"}
SPOOL_ID = "0123456789abcdef0123456789abcdef"


def problem(kind, body):
    with pytest.raises(InvalidEvent) as raised:
        webhook_event(kind, body)
    return str(raised.value)


# --- webhook bodies -----------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_a_webhook_body_becomes_an_event_with_its_domain_normalized_and_its_id_stripped(kind):
    body = {"domain": " Example.COM. ", "backup_id": "  backup_1 ", "progress": 10}
    event = webhook_event(kind, body, received_at=1_700_000_000_000)
    assert event == Event(EventKind(kind), "example.com", "backup_1", body, 1_700_000_000_000)
    assert event.kind is EventKind(kind) and event.spool_id is None


def test_received_at_defaults_to_now():
    from models import now_ms
    before = now_ms()
    assert before <= webhook_event("complete", BODY).received_at <= now_ms()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("field", ["domain", "backup_id"])
@pytest.mark.parametrize("value", [None, "", "   ", 42, True, ["example.com"], {"a": 1}],
                         ids=["null", "empty", "blank", "number", "bool", "list", "object"])
def test_domain_or_backup_id_missing_empty_or_not_a_string_is_refused(kind, field, value):
    assert problem(kind, {**BODY, field: value}) == f"'{field}' is required and must be a non-empty string"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("field", ["domain", "backup_id"])
def test_domain_or_backup_id_absent_is_refused(kind, field):
    body = dict(BODY)
    del body[field]
    assert field in problem(kind, body)


def test_a_domain_of_only_dots_and_spaces_is_refused():
    assert "domain" in problem("progress", {**BODY, "domain": " . "})


@pytest.mark.parametrize("progress", [-1, -0.01, 100.01, 101, float("nan"), float("inf"), 10 ** 400, "50", True,
                                      False, [50], {"v": 50}])
def test_progress_not_a_finite_number_in_range_is_refused(progress):
    assert problem("progress", {**BODY, "progress": progress}) == "'progress' must be a number from 0 to 100"


@pytest.mark.parametrize("progress", [None, 0, 0.0, 45.5, 100, 100.0])
def test_progress_in_range_or_absent_is_accepted(progress):
    assert webhook_event("progress", {**BODY, "progress": progress}).payload["progress"] == progress


@pytest.mark.parametrize("status", ["completed", "failed", "running", "PENDING", "", 1, True, ["pending"]])
def test_a_progress_status_other_than_pending_or_in_progress_is_refused(status):
    assert problem("progress", {**BODY, "status": status}) == "'status' must be 'pending' or 'in_progress'"


@pytest.mark.parametrize("kind", ["complete", "failed"])
def test_progress_and_status_are_checked_only_on_progress_events(kind):
    assert webhook_event(kind, {**BODY, "progress": 500, "status": "bogus"}).kind == kind


def test_an_unknown_kind_is_refused():
    with pytest.raises(ValueError):
        webhook_event("deleted", BODY)


# --- the value ------------------------------------------------------------------------------

def test_an_event_cannot_be_changed():
    event = webhook_event("progress", {**BODY, "progress": 10})
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.kind = EventKind.COMPLETE
    with pytest.raises(TypeError):
        event.payload["progress"] = 90
    assert event.payload["progress"] == 10


# --- spool lines --------------------------------------------------------------------------

def test_a_spooled_webhook_reads_back_as_the_same_event_with_its_spool_id():
    event = webhook_event("failed", {**BODY, "domain": "EXAMPLE.com", "error_message": {"code": 28}}, received_at=7)
    line = json.dumps(spool_record(event, SPOOL_ID))
    assert spooled_event(json.loads(line)) == dataclasses.replace(event, spool_id=SPOOL_ID)


def record(**changes):
    fields = {"spool_id": SPOOL_ID, "received_at": 1, "kind": "progress", "domain": "example.com",
              "backup_id": "backup_1", "payload": {**BODY, "progress": 5}}
    return {name: value for name, value in {**fields, **changes}.items() if value is not ...}


@pytest.mark.parametrize("spooled,reason", [
    (123, "not a JSON object"),
    ([1, 2], "not a JSON object"),
    (None, "not a JSON object"),
    (record(spool_id=...), "no spool_id"),
    (record(spool_id=""), "no spool_id"),
    (record(spool_id="A" * 32), "no spool_id"),
    (record(received_at="yesterday"), "no received_at time"),
    (record(received_at=True), "no received_at time"),
    (record(received_at=1.5), "no received_at time"),
    (record(kind="deleted"), "no known kind"),
    (record(kind=["progress"]), "no known kind"),
    (record(payload=[1, 2]), "no payload object"),
    (record(payload=...), "no payload object"),
    (record(payload={"domain": 5, "backup_id": "b"}), "'domain' is required and must be a non-empty string"),
    (record(payload={**BODY, "progress": 500}), "'progress' must be a number from 0 to 100"),
])
def test_a_spool_line_without_the_spooled_shape_is_refused_with_its_reason(spooled, reason):
    with pytest.raises(InvalidEvent) as raised:
        spooled_event(spooled)
    assert str(raised.value) == reason


# --- status answers ---------------------------------------------------------------------------

def polled_body(answer, **fields):
    return {**BODY, "source": "backup/status", "answer": answer, **fields}


@pytest.mark.parametrize("answer,kind,fields", [
    ({"status": "completed", "progress": 100}, "complete", {}),
    ({"status": "failed", "error": "Out of disk"}, "failed", {"error_message": "Out of disk"}),
    ({"status": "in_progress", "progress": 30}, "progress", {"status": "in_progress", "progress": 30}),
    ({"status": "pending"}, "progress", {"status": "pending", "progress": None}),
], ids=["completed", "failed", "in_progress", "pending"])
def test_a_status_answer_is_the_event_of_the_webhook_it_stands_for(answer, kind, fields):
    polled = polled_event("example.com", "backup_1", answer, received_at=9)
    assert polled == webhook_event(kind, polled_body(answer, **fields), received_at=9)


@pytest.mark.parametrize("progress", [250, -3, "30", None])
def test_a_status_answer_with_a_progress_the_webhook_would_refuse_keeps_the_rest(progress):
    polled = polled_event("example.com", "backup_1", {"status": "in_progress", "progress": progress})
    assert polled.kind == EventKind.PROGRESS and polled.payload["progress"] is None
    assert polled.payload["status"] == "in_progress"


@pytest.mark.parametrize("status", ["running", None, "COMPLETED", 1])
def test_a_status_answer_the_plugin_never_documented_is_no_event(status):
    assert polled_event("example.com", "backup_1", {"status": status}) is None
