"""Frames: every field is checked on decode, and every message fits the limit."""

from __future__ import annotations

import re

import msgpack
import pytest

from corral import protocol as p
from corral.constants import MAX_FRAME_BYTES, PROTOCOL_VERSION


def test_frames_too_big_for_one_message_are_split_and_arrive_whole() -> None:
    big = [
        p.ResultReport(f"j{n}", 1, p.JobState.SUCCEEDED, result="r" * 3_000_000) for n in range(9)
    ]
    small = [
        p.ResultReport(f"s{n}", 1, p.JobState.FAILED, 1, None, "E", "m", "t") for n in range(5000)
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


def test_each_direction_decodes_only_its_own_frames() -> None:
    ack = p.Ack([p.AttemptRef("j", 1)]).encode()
    assert p.decode(ack, p.TO_WORKER) == p.Ack([p.AttemptRef("j", 1)])
    with pytest.raises(p.ProtocolError, match="unexpected 'ack' frame"):
        p.decode(ack, p.FROM_WORKER)
    nested = p.bundle([p.bundle([p.Heartbeat().encode(), p.Heartbeat().encode()])[0], ack])[0]
    with pytest.raises(p.ProtocolError, match="unexpected 'bundle' frame"):
        p.decode_all(nested, p.TO_WORKER)


@pytest.mark.parametrize(
    ("item", "named"),
    [
        (["j", 1, "lost", None, None, None, None, None, None, None, None], "[0].state"),
        (["j", 0, "succeeded", None, None, None, None, None, None, None, None], "[0].attempt"),
        (["", 1, "succeeded", None, None, None, None, None, None, None, None], "[0].job_id"),
        (
            ["j", 1, "failed", None, None, None, "m" * 70_000, None, None, None, None],
            "[0].error_message",
        ),
        (["j", 1, "failed", None, None, None, None, None, None, float("nan"), None], "[0].started"),
        (["j", 1, "failed", True, None, None, None, None, None, None, None], "[0].exit_code"),
        (["j", 1, "succeeded"], "[0]"),
    ],
)
def test_a_result_report_that_does_not_fit_is_named(item: list[object], named: str) -> None:
    with pytest.raises(p.ProtocolError, match=re.escape(f"results.items{named}")):
        p.decode(msgpack.packb(["results", [item]]), p.FROM_WORKER)


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
