"""The flows part of the Store contract (corral.server.store.flow_rows), against every store."""

from __future__ import annotations

from pathlib import Path

import pytest
from store_support import reopened

from corral.server.flows.runs import FlowJobState, FlowRunState
from corral.server.store import (
    AdvanceSchedule,
    BufferDue,
    CancelRun,
    DeleteFlow,
    DropDue,
    DuplicateRun,
    FlowRow,
    FlowRunRow,
    FlowVersionConflict,
    InsertRun,
    PauseFlow,
    ReopenRun,
    RunJobRow,
    SaveFlow,
    ScheduleRow,
    Store,
    UpdateRun,
    UpdateRunJobs,
)


def version(name: str, number: int, applied: float = 1.0) -> FlowRow:
    return FlowRow(name, number, f"fp-{name}-{number}", f"def {number}".encode(), applied)


def run(run_id: str, flow: str = "etl", due: float | None = None, **fields: object) -> FlowRunRow:
    values: dict[str, object] = {
        "version": 1,
        "state": FlowRunState.RUNNING,
        "created": 10.0,
        "params": b"\x80",
        "due": due,
        "jobs": [
            RunJobRow("extract", FlowJobState.PENDING),
            RunJobRow("load", FlowJobState.PENDING),
        ],
    }
    values.update(fields)
    return FlowRunRow(run_id, flow, **values)  # type: ignore[arg-type]


def test_each_apply_of_a_flow_is_a_new_version_and_the_current_one_is_the_last(
    store: Store,
) -> None:
    store.write([SaveFlow(version("etl", 1)), SaveFlow(version("backup", 1))])
    store.write([SaveFlow(version("etl", 2, applied=2.0))])
    assert store.get_flow("etl") == version("etl", 2, applied=2.0)
    assert store.get_flow("etl", 1) == version("etl", 1)
    assert store.get_flow("etl", 3) is None and store.get_flow("nope") is None
    assert [row.version for row in store.flow_versions("etl")] == [2, 1]
    assert store.flow_versions("nope") == []
    assert [(row.name, row.version) for row in store.list_flows()] == [("backup", 1), ("etl", 2)]
    assert [row.name for row in store.list_flows(after="backup")] == ["etl"]
    assert [row.name for row in store.list_flows(limit=1)] == ["backup"]


@pytest.mark.parametrize("number", [1, 3])
def test_a_version_that_does_not_follow_the_current_one_refuses_the_whole_batch(
    store: Store, number: int
) -> None:
    store.write([SaveFlow(version("etl", 1))])
    with pytest.raises(FlowVersionConflict, match="at version 1"):
        store.write([SaveFlow(version("other", 1)), SaveFlow(version("etl", number))])
    assert store.get_flow("other") is None
    assert [row.version for row in store.flow_versions("etl")] == [1]
    # Two versions in one batch follow each other.
    store.write([SaveFlow(version("etl", 2)), SaveFlow(version("etl", 3))])
    assert store.get_flow("etl").version == 3  # type: ignore[union-attr]


def test_pause_and_the_schedule_cursor_are_the_flows_whatever_its_version(store: Store) -> None:
    store.write([SaveFlow(version("etl", 1)), PauseFlow("etl", True)])
    store.write([AdvanceSchedule("etl", 100.0), AdvanceSchedule("etl", 50.0)])  # never back
    store.write([SaveFlow(version("etl", 2)), PauseFlow("ghost", True)])
    for row in (store.get_flow("etl"), store.get_flow("etl", 1)):
        assert row is not None and (row.paused, row.recorded_until) == (True, 100.0)
    store.write([PauseFlow("etl", False)])
    assert store.get_flow("etl").paused is False  # type: ignore[union-attr]
    assert store.load_schedules() == [ScheduleRow("etl", 100.0, [])]


def test_a_due_time_gets_one_run_ever(store: Store) -> None:
    store.write([SaveFlow(version("etl", 1)), InsertRun(run("R1", due=60.0))])
    with pytest.raises(DuplicateRun, match=r"already has a run of due time 60\.0"):
        store.write([InsertRun(run("R2", due=120.0)), InsertRun(run("R3", due=60.0))])
    with pytest.raises(DuplicateRun):  # twice in one batch
        store.write([InsertRun(run("R4", due=180.0)), InsertRun(run("R5", due=180.0))])
    with pytest.raises(DuplicateRun, match="R1"):
        store.write([InsertRun(run("R1"))])
    assert [row.id for row in store.list_runs("etl")] == ["R1"]  # nothing of the refused ones
    store.write([InsertRun(run("R6")), InsertRun(run("R7"))])  # manual runs have no due time
    assert [row.id for row in store.list_runs("etl")] == ["R7", "R6", "R1"]


def test_a_restart_finds_the_running_runs_their_jobs_and_the_buffered_due_times(
    store: Store, tmp_path: Path
) -> None:
    store.write(
        [
            SaveFlow(version("etl", 1)),
            AdvanceSchedule("etl", 300.0),
            BufferDue("etl", 240.0),
            BufferDue("etl", 300.0),
            BufferDue("ghost", 1.0),  # no such flow: ignored
            InsertRun(run("R1", due=60.0)),
            InsertRun(run("R2", due=120.0)),
            UpdateRunJobs("R1", (RunJobRow("extract", FlowJobState.SUCCEEDED, "J1"),)),
            UpdateRunJobs("R1", (RunJobRow("report", FlowJobState.QUEUED, "J2"),)),
            UpdateRun("R2", FlowRunState.FAILED, finished=130.0),
        ]
    )
    # The run of a buffered due time takes it off the buffered ones.
    store.write([InsertRun(run("R3", due=240.0)), DropDue("etl", 999.0)])
    store = reopened(store, tmp_path / "c.db")
    active = store.load_active_runs()
    assert [row.id for row in active] == ["R1", "R3"]
    assert active[0].jobs == [
        RunJobRow("extract", FlowJobState.SUCCEEDED, "J1"),
        RunJobRow("load", FlowJobState.PENDING),
        RunJobRow("report", FlowJobState.QUEUED, "J2"),
    ]
    assert store.load_schedules() == [ScheduleRow("etl", 300.0, [300.0])]
    failed = store.get_run("R2")
    assert failed is not None and (failed.state, failed.finished) == (FlowRunState.FAILED, 130.0)
    assert store.list_runs("etl", before="R3", limit=1)[0].jobs == []  # listed without jobs
    assert [row.id for row in store.list_runs("etl", before="R3")] == ["R2", "R1"]
    store.write([DropDue("etl", 300.0), UpdateRun("ghost", FlowRunState.FAILED)])
    assert store.load_schedules() == [ScheduleRow("etl", 300.0, [])]
    store.close()  # the reopened one (the fixture closes the first)


def test_a_cancel_stays_with_a_running_run_across_a_restart_until_a_retry_reopens_it(
    store: Store, tmp_path: Path
) -> None:
    store.write([SaveFlow(version("etl", 1)), InsertRun(run("R1")), InsertRun(run("R2"))])
    store.write([CancelRun("R1"), CancelRun("ghost"), ReopenRun("ghost")])  # ghosts: ignored
    store = reopened(store, tmp_path / "c.db")
    assert [(row.id, row.state, row.cancelled) for row in store.load_active_runs()] == [
        ("R1", FlowRunState.RUNNING, True),
        ("R2", FlowRunState.RUNNING, False),
    ]
    store.write([UpdateRun("R1", FlowRunState.CANCELLED, finished=50.0)])
    assert [row.id for row in store.load_active_runs()] == ["R2"]
    store.write([ReopenRun("R1")])  # a retry: running again, neither cancelled nor finished
    again = store.get_run("R1")
    assert again is not None
    assert (again.state, again.cancelled, again.finished) == (FlowRunState.RUNNING, False, None)
    store.close()  # the reopened one (the fixture closes the first)


def test_deleting_a_flow_deletes_its_versions_runs_and_due_times(store: Store) -> None:
    store.write(
        [
            SaveFlow(version("etl", 1)),
            SaveFlow(version("etl", 2)),
            SaveFlow(version("keep", 1)),
            InsertRun(run("R1", due=60.0)),
            InsertRun(run("K1", flow="keep")),
            BufferDue("etl", 120.0),
        ]
    )
    store.write([DeleteFlow("etl"), DeleteFlow("ghost")])
    assert store.get_flow("etl") is None and store.flow_versions("etl") == []
    assert store.get_run("R1") is None and store.list_runs("etl") == []
    assert [row.id for row in store.load_active_runs()] == ["K1"]
    assert store.load_schedules() == [ScheduleRow("keep", None, [])]
    # A flow of that name starts afresh: version 1, and its old due times are free again.
    store.write([SaveFlow(version("etl", 1)), InsertRun(run("R2", due=60.0))])
    assert [row.id for row in store.list_runs("etl")] == ["R2"]


def test_rows_read_are_copies(store: Store) -> None:
    store.write([SaveFlow(version("etl", 1)), InsertRun(run("R1"))])
    got = store.get_run("R1")
    assert got is not None
    got.jobs[0].state = FlowJobState.FAILED
    got.state = FlowRunState.CANCELLED
    again = store.get_run("R1")
    assert again is not None and again.state is FlowRunState.RUNNING
    assert again.jobs[0].state is FlowJobState.PENDING
