"""Frames: every field is checked on decode, and every message fits the limit."""

from __future__ import annotations

import re

import msgpack
import pytest

from corral import protocol as p
from corral.constants import MAX_FRAME_BYTES, PROTOCOL_VERSION
from corral.models import JobState


def test_frames_too_big_for_one_message_are_split_and_arrive_whole() -> None:
    big = [p.ResultReport(f"j{n}", 1, JobState.SUCCEEDED, result="r" * 3_000_000) for n in range(9)]
    small = [
        p.ResultReport(f"s{n}", 1, JobState.FAILED, 1, None, "E", "m", "t") for n in range(5000)
    ]
    output = p.Log([p.LogItem("j0", 1, "stdout", b"o")])
    messages = p.messages([p.Results(big), p.Heartbeat(), p.Results(small), output])
    assert len(messages) > 1 and max(map(len, messages)) <= MAX_FRAME_BYTES
    frames = [frame for data in messages for frame in p.decode_all(data, p.FROM_WORKER)]
    reports = [item for frame in frames if isinstance(frame, p.Results) for item in frame.items]
    assert reports == big + small
    assert frames[-1] == output and p.Heartbeat() in frames


def test_an_item_too_big_for_any_message_is_refused_before_sending() -> None:
    huge = p.Jobs([p.JobItem("j", 1, b"x" * MAX_FRAME_BYTES)])
    with pytest.raises(p.ProtocolError, match="does not fit"):
        p.encode(huge)


def test_a_run_of_many_jobs_is_split_into_frames_of_that_run_and_a_call_is_never_split() -> None:
    jobs = [p.RunJobItem(f"job-{n:05}", "queued", f"id{n:030}") for n in range(20_000)]
    parts = p.encode(p.RunJobs("run-1", jobs), budget=100_000)
    assert len(parts) > 1 and max(map(len, parts)) <= 100_000
    frames = [p.decode(part, p.TO_CLIENT) for part in parts]
    assert {frame.run_id for frame in frames if isinstance(frame, p.RunJobs)} == {"run-1"}
    assert [item for frame in frames if isinstance(frame, p.RunJobs) for item in frame.jobs] == jobs
    # A call's arguments go together or not at all: the server would run half a call.
    with pytest.raises(p.ProtocolError, match="does not fit"):
        p.encode(p.Call(1, "put_many", "q", [["x" * 1000] * 200]), budget=100_000)
    with pytest.raises(p.ProtocolError, match=r"runjobs.jobs\[0\].name"):
        p.decode(msgpack.packb(["runjobs", "r", [["", "queued", None]]]), p.TO_CLIENT)


def test_each_direction_decodes_only_its_own_frames() -> None:
    ack = p.Ack([p.AttemptRef("j", 1)]).encode()
    assert p.decode(ack, p.TO_WORKER) == p.Ack([p.AttemptRef("j", 1)])
    with pytest.raises(p.ProtocolError, match="unexpected 'ack' frame"):
        p.decode(ack, p.FROM_WORKER)
    nested = p.bundle([p.bundle([p.Heartbeat().encode(), p.Heartbeat().encode()])[0], ack])[0]
    with pytest.raises(p.ProtocolError, match="unexpected 'bundle' frame"):
        p.decode_all(nested, p.TO_WORKER)


def report(**fields: object) -> list[object]:
    """A result report as it goes on the wire, with fields replaced."""
    return list(p.ResultReport("j", 1, JobState.FAILED)._replace(**fields))


@pytest.mark.parametrize(
    ("item", "named"),
    [
        (report(state="lost"), "[0].state"),
        (report(state="queued"), "[0].state"),
        (report(attempt=0), "[0].attempt"),
        (report(job_id=""), "[0].job_id"),
        (report(error_message="m" * 70_000), "[0].error_message"),
        (report(started=float("nan")), "[0].started"),
        (report(exit_code=True), "[0].exit_code"),
        (report(truncated={"weird": 1}), "[0].truncated"),
        (report(truncated={"stdout": -1}), "[0].truncated.stdout"),
        (report()[:11], "[0]"),
    ],
)
def test_a_result_report_that_does_not_fit_is_named(item: list[object], named: str) -> None:
    with pytest.raises(p.ProtocolError, match=re.escape(f"results.items{named}")):
        p.decode(msgpack.packb(["results", [item]]), p.FROM_WORKER)


@pytest.mark.parametrize(
    ("item", "named"),
    [
        (["j", 1, "soon"], "[0].started"),
        (["j", 1, float("inf")], "[0].started"),
        (["j", 0, 1.0], "[0].attempt"),
        (["", 1, 1.0], "[0].job_id"),
        (["j", 1], "[0]"),
    ],
)
def test_a_start_report_that_does_not_fit_is_named(item: list[object], named: str) -> None:
    with pytest.raises(p.ProtocolError, match=re.escape(f"started.items{named}")):
        p.decode(msgpack.packb(["started", [item]]), p.FROM_WORKER)


def test_take_back_goes_to_workers_and_its_answer_comes_from_them() -> None:
    started = p.Started([p.StartReport("j", 1, 1.5), p.StartReport("k", 2, 3)])
    assert p.decode(started.encode(), p.FROM_WORKER) == started
    take_back = p.TakeBack(["j", "k"])
    assert p.decode(take_back.encode(), p.TO_WORKER) == take_back
    with pytest.raises(p.ProtocolError, match="unexpected 'takeback' frame"):
        p.decode(take_back.encode(), p.FROM_WORKER)
    returned = p.Returned(["k"])
    assert p.decode(returned.encode(), p.FROM_WORKER) == returned
    with pytest.raises(p.ProtocolError, match="unexpected 'returned' frame"):
        p.decode(returned.encode(), p.TO_WORKER)


def test_a_report_with_every_detail_passes_its_checks() -> None:
    full = p.ResultReport(
        "j", 2, JobState.TIMED_OUT, -9, [1], "E", "m", "tb", 7, 1, 2.5, {"stdout": 10}
    )
    [decoded] = p.decode(p.Results([full]).encode(), p.FROM_WORKER).items  # type: ignore[attr-defined]
    assert decoded == full._replace(started=1.0)


def test_a_hello_of_another_version_is_told_apart_whatever_its_fields() -> None:
    with pytest.raises(p.OtherProtocol) as other:
        p.decode_hello(msgpack.packb(["hello", PROTOCOL_VERSION - 1, "w"]))
    assert other.value.version == PROTOCOL_VERSION - 1
    old = msgpack.packb(["hello", PROTOCOL_VERSION, "w", "h", 1, 1, 1, ["q"], []])
    assert p.decode_hello(old).secret == ""  # fields added later may be left out


def test_a_malformed_submit_body_is_rejected_with_its_request_id() -> None:
    with pytest.raises(p.RequestRejected) as rejected:
        p.decode(msgpack.packb(["submit", 4, {"kind": "shell"}]), p.FROM_CLIENT)
    assert rejected.value.request_id == 4 and "submit.specs" in str(rejected.value)


def test_calls_on_primitives_and_their_answers_round_trip_checked() -> None:
    call = p.Call(9, "put", "tasks", [[[b"item", b""]], True, None])
    assert p.decode(call.encode(), p.FROM_CLIENT) == call
    for answer in (p.Answer(9, [[b"x", 1]], True), p.Refused(9, "queue.Empty", "empty")):
        assert p.decode(answer.encode(), p.TO_CLIENT) == answer
    assert p.decode(msgpack.packb(["answer", 9, None]), p.TO_CLIENT) == p.Answer(9, None)
    with pytest.raises(p.RequestRejected) as rejected:  # answered, the stream stays open
        p.decode(msgpack.packb(["call", 5, "put", "tasks", "not a list"]), p.FROM_CLIENT)
    assert rejected.value.request_id == 5 and "call.args" in str(rejected.value)
    with pytest.raises(p.ProtocolError, match=r"call\.args"):
        p.decode(msgpack.packb(["call", 5, "put", "q", list(range(100))]), p.FROM_CLIENT)
    with pytest.raises(p.ProtocolError, match=r"refused\.error"):
        p.decode(msgpack.packb(["refused", 5, "x" * 100, ""]), p.TO_CLIENT)


def test_submitted_carries_warnings_only_when_there_are_some() -> None:
    ids = ["01JOB000000000000000000000"]
    plain = p.Submitted(7, ids)
    # Without warnings, the frame a client from before them reads.
    assert plain.encode() == msgpack.packb(["submitted", 7, ids])
    assert p.decode(plain.encode(), p.TO_CLIENT) == plain
    warned = p.Submitted(7, ids, ["no connected worker serves queue 'ci'; the job waits"])
    assert p.decode(warned.encode(), p.TO_CLIENT) == warned
    with pytest.raises(p.ProtocolError, match=r"submitted\.warnings\[0\]"):
        p.decode(msgpack.packb(["submitted", 7, ids, [3]]), p.TO_CLIENT)
