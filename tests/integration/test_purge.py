"""Deleting finished jobs: one by id, many by `corral purge`, and the server's own retention."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from integration_support import ServerProcess, WorkerProcess, run_corral, wait_for

import corral
from corral.errors import Conflict, Forbidden, InvalidRequest, NotFound
from corral.ids import IdGenerator
from corral.models import JobState
from corral.server.store import InsertJobs, JobRow, SQLiteStore

DAY = 86400.0
PURGED = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)
KEPT = (JobState.TIMED_OUT, JobState.LOST)


def cli_env(server: ServerProcess) -> dict[str, str]:
    return {"CORRAL_URL": server.url, "CORRAL_TOKEN": server.token}


def test_a_finished_job_is_deleted_by_id_and_a_running_one_is_not(
    server: ServerProcess,
    client: corral.Client,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    start_worker(server, "--concurrency", "2")
    done = client.submit_shell("echo hello; echo oops >&2")
    assert done.wait(timeout=30) is JobState.SUCCEEDED
    parked = client.submit_shell("true", queue="nobody-serves-this")
    reader = client.create_token("reader", "read")

    with corral.connect(server.url, reader) as read_only, pytest.raises(Forbidden):
        read_only.delete(done.id)
    with pytest.raises(Conflict, match="cancel it first"):
        client.delete(parked.id)
    client.delete(done.id)
    with pytest.raises(NotFound):
        client.delete(done.id)
    with pytest.raises(NotFound):
        client.logs(done.id)

    shown = run_corral("show", done.id, env=cli_env(server))
    assert shown.returncode == 5, shown.stderr
    assert "no job" in shown.stderr
    assert client.get(parked.id).state is JobState.QUEUED
    client.cancel(parked.id)
    assert client.job(parked.id).wait(timeout=30) is JobState.CANCELLED
    client.delete(parked.id)
    # The server forgets it: a watch on the purged id says it is unknown, at once.
    with pytest.raises(NotFound):
        client.job(done.id).wait(timeout=10)


def test_purge_refuses_bad_input_with_a_clear_message(server: ServerProcess) -> None:
    env = cli_env(server)
    bad = run_corral("purge", "--finished-before", "soon", env=env)
    assert bad.returncode == 2
    assert "'soon' is not a duration" in bad.stderr
    for command in ("server", "up"):
        shown = run_corral(command, "--help")
        assert "--keep" in shown.stdout and "[default: 7d]" in shown.stdout
        refused = run_corral(command, "--keep", "-1d", "--port", "0")
        assert refused.returncode == 2
        assert "'-1d' is not a duration" in refused.stderr
    unfinished = run_corral("purge", "--finished-before", "1d", "--state", "running", env=env)
    assert unfinished.returncode == 6, unfinished.stderr
    assert "running is not a finished state" in unfinished.stderr
    answer = httpx.post(
        f"{server.url}/api/v1/jobs/purge",
        json={"finished_before": "never"},
        headers={"Authorization": f"Bearer {server.token}"},
    )
    assert answer.status_code == 422
    assert "finished_before" in answer.text
    with server.connect() as client:
        submitter = client.create_token("submitter", "submit")
    with corral.connect(server.url, submitter) as limited, pytest.raises(Forbidden):
        limited.purge(time.time())
    with server.connect() as client, pytest.raises(InvalidRequest, match="not a finished"):
        client.purge(time.time(), ["queued"])


def store_old_jobs(
    server: ServerProcess, template: JobRow, parked: JobRow, now: float, count: int
) -> None:
    """Write `count` jobs straight into the stopped server's database: most finished ten days
    ago (in every finished state), some an hour ago, and some queued ten days ago."""
    generator = IdGenerator()
    states = (*PURGED, *KEPT)
    rows = []
    for number in range(count):
        kind = number % 10
        if kind == 9:
            row = parked
        else:
            age = DAY * 10 if kind < 8 else 3600.0
            state = states[number // 10 % len(states)]
            row = dataclasses.replace(template, state=state, finished=now - age + number * 1e-6)
        rows.append(dataclasses.replace(row, id=generator.new(), created=now - DAY * 11))
    store = SQLiteStore(server.data_dir / "corral.db")
    try:
        for start in range(0, count, 50_000):
            store.write([InsertJobs(rows[start : start + 50_000])])
    finally:
        store.close()


def counts(server: ServerProcess, now: float) -> dict[str, int]:
    store = SQLiteStore(server.data_dir / "corral.db")
    try:
        connection = store._reader()
        old = dict(
            connection.execute(
                "SELECT state, count(*) FROM jobs WHERE finished < ? GROUP BY state",
                (now - DAY,),
            ).fetchall()
        )
        recent = connection.execute(
            "SELECT count(*) FROM jobs WHERE finished >= ?", (now - DAY,)
        ).fetchone()[0]
        queued = connection.execute("SELECT count(*) FROM jobs WHERE state = 'queued'")
        orphans = connection.execute(
            "SELECT count(*) FROM attempts WHERE job_id NOT IN (SELECT id FROM jobs)"
        ).fetchone()[0]
        return {**old, "recent": recent, "queued": queued.fetchone()[0], "orphans": orphans}
    finally:
        store.close()


def fill_with_old_jobs(
    server: ServerProcess, start_worker: Callable[..., WorkerProcess], now: float, total: int
) -> None:
    """Run one job, then stop the server and store `total` more (see store_old_jobs)."""
    with server.connect() as client:
        template_job = client.submit_shell("true")
        parked_job = client.submit_shell("true", queue="parked")  # no worker takes it
        start_worker(server, "--concurrency", "2")
        assert template_job.wait(timeout=30) is JobState.SUCCEEDED
    server.stop()
    store = SQLiteStore(server.data_dir / "corral.db")
    template, parked = store.get_job(template_job.id), store.get_job(parked_job.id)
    store.close()
    assert template is not None and parked is not None
    store_old_jobs(server, template, parked, now, total)


def test_the_server_deletes_jobs_older_than_keep_in_the_background(
    start_server: Callable[..., ServerProcess],
    start_worker: Callable[..., WorkerProcess],
) -> None:
    server = start_server("--keep", "never")
    now = time.time()
    fill_with_old_jobs(server, start_worker, now, 5000)
    server.restart()
    time.sleep(1)  # `never`: nothing is deleted (the first round would run at once)
    assert counts_rows(server) == 5002
    server.stop()
    server.args = ["--keep", "2d"]
    server.restart()
    wait_for(lambda: counts_rows(server) == 1002, 30, "the old jobs to be deleted")
    server.stop()
    assert counts(server, now) == {"recent": 501, "queued": 501, "orphans": 0}


def test_purging_200000_jobs_leaves_submissions_flowing(
    start_server: Callable[..., ServerProcess],
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    server = start_server("--keep", "never")
    now = time.time()
    total = 200_000
    fill_with_old_jobs(server, start_worker, now, total)
    server.restart()

    purged: list[object] = []
    cutoff = now - DAY
    command = ["purge", "--finished-before", "1d", "--json"]
    states = [arg for state in PURGED for arg in ("--state", state.value)]
    purge = threading.Thread(
        target=lambda: purged.append(run_corral(*command, *states, env=cli_env(server)))
    )
    probes: list[float] = []
    with server.connect() as client:
        purge.start()
        wait_for(lambda: counts_rows(server) < total, 30, "the purge to start deleting")
        while purge.is_alive() and len(probes) < 20:
            started = time.monotonic()
            assert client.submit_shell("true").wait(timeout=30) is JobState.SUCCEEDED
            probes.append(time.monotonic() - started)
            if purge.is_alive():
                assert probes[-1] < 2.0, probes
        still_running = purge.is_alive()
        purge.join(120)
    assert still_running and probes, "the purge ended before a job could be submitted during it"

    result = purged[0]
    assert result.returncode == 0, result.stderr  # type: ignore[attr-defined]
    report = json.loads(result.stdout)  # type: ignore[attr-defined]
    old_per_state = total // 10 * 8 // len(PURGED + KEPT)
    assert report["deleted"] == old_per_state * len(PURGED)
    assert abs(report["finished_before"] - cutoff) < 600
    server.stop()
    found = counts(server, now)
    assert found == {
        **{state.value: old_per_state for state in KEPT},
        "recent": total // 10 + 1 + len(probes),
        "queued": total // 10 + 1,
        "orphans": 0,
    }


def counts_rows(server: ServerProcess) -> int:
    """How many jobs the running server's database holds, read beside it (WAL allows that)."""
    with sqlite3.connect(f"file:{server.data_dir / 'corral.db'}?mode=ro", uri=True) as database:
        count = database.execute("SELECT count(*) FROM jobs").fetchone()[0]
    database.close()
    return int(count)
