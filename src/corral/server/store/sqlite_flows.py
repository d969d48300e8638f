"""The tables of flows in SQLiteStore: their schema, writes and reads (contract: flow_rows.py).

The store's own transactions and connections stay in sqlite.py; these functions run inside them.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from typing import Any

from corral.server.flows.runs import FlowJobState, FlowRunState
from corral.server.store.flow_rows import (
    AdvanceSchedule,
    BufferDue,
    CancelRun,
    DeleteFlow,
    DropDue,
    FlowMutation,
    FlowRow,
    FlowRunRow,
    InsertRun,
    PauseFlow,
    ReopenRun,
    RunJobRow,
    SaveFlow,
    ScheduleRow,
    UpdateRun,
    UpdateRunJobs,
    duplicate_run,
    version_conflict,
)

# One row a flow (its state and current version), one a version (the definitions), one a run
# and one a run's job. (flow, due) is unique among runs: a due time gets one run, ever.
FLOW_SCHEMA = (
    """CREATE TABLE flows (
        name TEXT PRIMARY KEY,
        version INTEGER NOT NULL,
        paused INTEGER NOT NULL DEFAULT 0,
        recorded_until REAL
    ) WITHOUT ROWID""",
    """CREATE TABLE flow_versions (
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        fingerprint TEXT NOT NULL,
        definition BLOB NOT NULL,
        applied REAL NOT NULL,
        PRIMARY KEY (name, version)
    )""",
    """CREATE TABLE flow_runs (
        id TEXT PRIMARY KEY,
        flow TEXT NOT NULL,
        version INTEGER NOT NULL,
        state TEXT NOT NULL,
        created REAL NOT NULL,
        params BLOB NOT NULL,
        due REAL,
        finished REAL,
        disabled TEXT NOT NULL DEFAULT '[]'
    )""",
    "CREATE UNIQUE INDEX flow_runs_by_due ON flow_runs (flow, due) WHERE due IS NOT NULL",
    "CREATE INDEX flow_runs_by_flow ON flow_runs (flow, id)",
    "CREATE INDEX flow_runs_running ON flow_runs (id) WHERE state = 'running'",
    """CREATE TABLE flow_run_jobs (
        run TEXT NOT NULL,
        name TEXT NOT NULL,
        state TEXT NOT NULL,
        job_id TEXT,
        PRIMARY KEY (run, name)
    ) WITHOUT ROWID""",
    """CREATE TABLE flow_buffered (
        name TEXT NOT NULL,
        due REAL NOT NULL,
        PRIMARY KEY (name, due)
    ) WITHOUT ROWID""",
)

# Schema 6: whether a run's cancel was asked for (it ends cancelled, across restarts).
FLOW_CANCEL_COLUMN = "ALTER TABLE flow_runs ADD COLUMN cancelled INTEGER NOT NULL DEFAULT 0"

_RUN_COLUMNS = "id, flow, version, state, created, params, due, finished, disabled, cancelled"


def apply_flow(connection: sqlite3.Connection, mutation: FlowMutation) -> None:
    """Apply one flow mutation inside the open transaction; raise to refuse the batch."""
    if isinstance(mutation, SaveFlow):
        _save_flow(connection, mutation.flow)
    elif isinstance(mutation, DeleteFlow):
        name = (mutation.name,)
        runs = "SELECT id FROM flow_runs WHERE flow = ?"
        connection.execute(f"DELETE FROM flow_run_jobs WHERE run IN ({runs})", name)
        for table, column in (
            ("flow_runs", "flow"),
            ("flow_buffered", "name"),
            ("flow_versions", "name"),
            ("flows", "name"),
        ):
            connection.execute(f"DELETE FROM {table} WHERE {column} = ?", name)
    elif isinstance(mutation, PauseFlow):
        connection.execute(
            "UPDATE flows SET paused = ? WHERE name = ?", (mutation.paused, mutation.name)
        )
    elif isinstance(mutation, AdvanceSchedule):
        connection.execute(
            "UPDATE flows SET recorded_until = max(coalesce(recorded_until, ?), ?) WHERE name = ?",
            (mutation.recorded_until, mutation.recorded_until, mutation.name),
        )
    elif isinstance(mutation, BufferDue):
        connection.execute(
            "INSERT OR IGNORE INTO flow_buffered SELECT name, ? FROM flows WHERE name = ?",
            (mutation.due, mutation.name),
        )
    elif isinstance(mutation, DropDue):
        connection.execute(
            "DELETE FROM flow_buffered WHERE name = ? AND due = ?", (mutation.name, mutation.due)
        )
    elif isinstance(mutation, InsertRun):
        _insert_run(connection, mutation.run)
    elif isinstance(mutation, UpdateRun):
        connection.execute(
            "UPDATE flow_runs SET state = ?, finished = coalesce(?, finished) WHERE id = ?",
            (mutation.state.value, mutation.finished, mutation.id),
        )
    elif isinstance(mutation, CancelRun):
        connection.execute("UPDATE flow_runs SET cancelled = 1 WHERE id = ?", (mutation.id,))
    elif isinstance(mutation, ReopenRun):
        connection.execute(
            "UPDATE flow_runs SET state = ?, finished = NULL, cancelled = 0 WHERE id = ?",
            (FlowRunState.RUNNING.value, mutation.id),
        )
    elif isinstance(mutation, UpdateRunJobs):
        connection.executemany(
            "INSERT OR REPLACE INTO flow_run_jobs SELECT id, ?, ?, ? FROM flow_runs WHERE id = ?",
            [(job.name, job.state.value, job.job_id, mutation.run_id) for job in mutation.jobs],
        )


def _save_flow(connection: sqlite3.Connection, row: FlowRow) -> None:
    found = connection.execute("SELECT version FROM flows WHERE name = ?", (row.name,)).fetchone()
    current = found[0] if found else 0
    if row.version != current + 1:
        raise version_conflict(row.name, row.version, current)
    connection.execute(
        "INSERT INTO flow_versions VALUES (?, ?, ?, ?, ?)",
        (row.name, row.version, row.fingerprint, row.definition, row.applied),
    )
    if found:
        connection.execute("UPDATE flows SET version = ? WHERE name = ?", (row.version, row.name))
    else:
        connection.execute(
            "INSERT INTO flows VALUES (?, ?, ?, ?)",
            (row.name, row.version, row.paused, row.recorded_until),
        )


def _insert_run(connection: sqlite3.Connection, run: FlowRunRow) -> None:
    taken = connection.execute(
        "SELECT 1 FROM flow_runs WHERE id = ? OR (flow = ? AND due = ?)",
        (run.id, run.flow, run.due),
    ).fetchone()
    if taken:
        raise duplicate_run(run)
    connection.execute(
        f"INSERT INTO flow_runs ({_RUN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            run.id, run.flow, run.version, run.state.value, run.created, run.params, run.due,
            run.finished, json.dumps(list(run.disabled)), run.cancelled,
        ),
    )  # fmt: skip
    connection.executemany(
        "INSERT INTO flow_run_jobs VALUES (?, ?, ?, ?)",
        [(run.id, job.name, job.state.value, job.job_id) for job in run.jobs],
    )
    if run.due is not None:
        connection.execute(
            "DELETE FROM flow_buffered WHERE name = ? AND due = ?", (run.flow, run.due)
        )


# -- reads -----------------------------------------------------------------------------------------

_FLOW_SELECT = (
    "SELECT v.name, v.version, v.fingerprint, v.definition, v.applied, f.paused,"
    " f.recorded_until FROM flow_versions v JOIN flows f ON f.name = v.name"
)


def _flow(row: tuple[Any, ...]) -> FlowRow:
    name, version, fingerprint, definition, applied, paused, recorded_until = row
    return FlowRow(
        name,
        version,
        fingerprint,
        definition,
        applied,
        bool(paused),
        recorded_until,
    )


def get_flow(connection: sqlite3.Connection, name: str, version: int | None) -> FlowRow | None:
    if version is None:
        query = f"{_FLOW_SELECT} WHERE v.name = ? AND v.version = f.version"
        found = connection.execute(query, (name,)).fetchone()
    else:
        query = f"{_FLOW_SELECT} WHERE v.name = ? AND v.version = ?"
        found = connection.execute(query, (name, version)).fetchone()
    return _flow(found) if found else None


def list_flows(connection: sqlite3.Connection, after: str | None, limit: int) -> list[FlowRow]:
    query = f"{_FLOW_SELECT} WHERE v.version = f.version AND f.name > ? ORDER BY f.name LIMIT ?"
    return [_flow(row) for row in connection.execute(query, (after or "", limit))]


def flow_versions(connection: sqlite3.Connection, name: str) -> list[FlowRow]:
    query = f"{_FLOW_SELECT} WHERE v.name = ? ORDER BY v.version DESC"
    return [_flow(row) for row in connection.execute(query, (name,))]


def _run(row: tuple[Any, ...], jobs: list[RunJobRow]) -> FlowRunRow:
    run_id, flow, version, state, created, params, due, finished, disabled, cancelled = row
    return FlowRunRow(
        run_id, flow, version, FlowRunState(state), created, params, due, finished,
        tuple(json.loads(disabled)), jobs, bool(cancelled),
    )  # fmt: skip


def _jobs_of(connection: sqlite3.Connection, run_ids: Iterable[str]) -> dict[str, list[RunJobRow]]:
    jobs: dict[str, list[RunJobRow]] = {run_id: [] for run_id in run_ids}
    for run_id, name, state, job_id in connection.execute(
        "SELECT run, name, state, job_id FROM flow_run_jobs WHERE run IN"
        " (SELECT value FROM json_each(?)) ORDER BY run, name",
        (json.dumps(list(jobs)),),
    ):
        jobs[run_id].append(RunJobRow(name, FlowJobState(state), job_id))
    return jobs


def get_run(connection: sqlite3.Connection, run_id: str) -> FlowRunRow | None:
    row = connection.execute(
        f"SELECT {_RUN_COLUMNS} FROM flow_runs WHERE id = ?", (run_id,)
    ).fetchone()
    return _run(row, _jobs_of(connection, [run_id])[run_id]) if row else None


def list_runs(
    connection: sqlite3.Connection, flow: str, before: str | None, limit: int
) -> list[FlowRunRow]:
    rows = connection.execute(
        f"SELECT {_RUN_COLUMNS} FROM flow_runs WHERE flow = ? AND id < ? ORDER BY id DESC LIMIT ?",
        (flow, before if before is not None else "\U0010ffff", limit),
    )
    return [_run(row, []) for row in rows]


def load_active_runs(connection: sqlite3.Connection) -> list[FlowRunRow]:
    rows = connection.execute(
        f"SELECT {_RUN_COLUMNS} FROM flow_runs WHERE state = 'running' ORDER BY id"
    ).fetchall()
    jobs = _jobs_of(connection, [str(row[0]) for row in rows])
    return [_run(row, jobs[str(row[0])]) for row in rows]


def load_schedules(connection: sqlite3.Connection) -> list[ScheduleRow]:
    schedules = {
        name: ScheduleRow(name, recorded_until)
        for name, recorded_until in connection.execute(
            "SELECT name, recorded_until FROM flows ORDER BY name"
        )
    }
    for name, due in connection.execute("SELECT name, due FROM flow_buffered ORDER BY name, due"):
        schedules[name].buffered.append(due)
    return list(schedules.values())
