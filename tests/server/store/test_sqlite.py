"""SQLiteStore beyond the contract: surviving kill -9 and a full disk, concurrent readers,
refusing bad files."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from integration_support import fill_disk, small_tmpfs

from corral.errors import ConfigError, StoreUnavailable
from corral.models import Attempt, JobState, PrimitiveKind
from corral.server.flows.runs import FlowRunState
from corral.server.store import (
    CancelRun,
    DeclarePrimitive,
    FlowRow,
    FlowRunRow,
    InsertJobs,
    InsertRun,
    ItemRow,
    JobFilter,
    JobRow,
    PushItems,
    SaveAttempt,
    SaveFlow,
    SQLiteStore,
    UpdateJob,
)
from corral.server.store.sqlite import SCHEMA_VERSION

JOBS_PER_BATCH = 100

# Writes numbered batches forever, printing each number once write() has returned.
WRITER_SCRIPT = """
import sys
from corral.models import JobState
from corral.server.store import AppendLog, InsertJobs, JobRow, SQLiteStore, UpdateJob

store = SQLiteStore(sys.argv[1])
number = int(sys.argv[2])
while True:
    jobs = [
        JobRow(f"B{number:06d}-{i:03d}", "n", "q", 0, JobState.QUEUED, 1.0, b"s" * 200)
        for i in range({jobs})
    ]
    previous = [UpdateJob(f"B{number - 1:06d}-{i:03d}", JobState.RUNNING) for i in range({jobs})]
    store.write([InsertJobs(jobs), *previous, AppendLog("log", "stdout", b"%d," % number)])
    print(number, flush=True)
    number += 1
""".replace("{jobs}", str(JOBS_PER_BATCH))


def write_until_killed(path: Path, first_batch: int, acknowledged: int) -> int:
    """Run a writer process, SIGKILL it after `acknowledged` confirmed batches; the last one."""
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER_SCRIPT, str(path), str(first_batch)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        last = first_batch - 1
        while last < first_batch - 1 + acknowledged:
            line = process.stdout.readline()
            assert line, f"writer exited early with {process.wait()}"
            last = int(line)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()
    return last


def test_every_acknowledged_batch_survives_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "corral.db"
    next_batch = 1
    for _ in range(3):
        last = write_until_killed(path, next_batch, acknowledged=30)
        with sqlite3.connect(path) as check:
            assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        store = SQLiteStore(path)
        try:
            counts = store.count_by_state()
            stored = sum(counts.values())
            assert stored % JOBS_PER_BATCH == 0, "a batch was half applied"
            assert stored >= last * JOBS_PER_BATCH
            for batch in range(1, last + 1):
                rows = store.list_jobs(JobFilter(name="n", ids=[f"B{batch:06d}-000"]))
                assert len(rows) == 1, f"acknowledged batch {batch} is missing"
            log = store.read_log("log", "stdout").data.decode()
            assert log.startswith(",".join(str(n) for n in range(1, last + 1)))
            next_batch = stored // JOBS_PER_BATCH + 1
        finally:
            store.close()


def test_readers_see_whole_batches_while_a_writer_commits(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "corral.db")
    batches, per_batch = 100, 50
    writer_done = threading.Event()
    failures: list[BaseException] = []
    reads = [0, 0]

    def write() -> None:
        try:
            for batch in range(batches):
                jobs = [
                    JobRow(f"{batch:04d}-{i:03d}", "n", "q", 0, JobState.QUEUED, 1.0, b"spec")
                    for i in range(per_batch)
                ]
                finished = [
                    UpdateJob(f"{batch - 1:04d}-{i:03d}", JobState.SUCCEEDED, result=b"r")
                    for i in range(per_batch)
                ]
                store.write([InsertJobs(jobs), *finished])
        finally:
            writer_done.set()

    def read(slot: int) -> None:
        try:
            while True:
                done = writer_done.is_set()
                counts = store.count_by_state()
                assert counts.get(JobState.QUEUED, 0) in (0, per_batch)
                assert sum(counts.values()) % per_batch == 0
                newest = store.list_jobs(JobFilter(limit=per_batch))
                assert len({row.id[:4] for row in newest}) <= 1
                assert all(row.state == JobState.QUEUED for row in newest)
                reads[slot] += 1
                if done:
                    return
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=write)]
    threads += [threading.Thread(target=read, args=(slot,)) for slot in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    store.close()
    assert not failures, failures
    assert min(reads) >= 1


def test_an_open_reader_does_not_block_the_writer(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "corral.db")
    try:
        store.write(
            [
                InsertJobs(
                    [JobRow(f"a{n}", "n", "q", 0, JobState.QUEUED, 1.0, b"") for n in range(3)]
                )
            ]
        )
        active = store.load_active()
        assert next(active).id == "a0"
        store.write([UpdateJob("a1", JobState.SUCCEEDED), UpdateJob("a2", JobState.SUCCEEDED)])
        # The open read keeps its snapshot; a new read sees the commit.
        assert [row.id for row in active] == ["a1", "a2"]
        assert [row.id for row in store.load_active()] == ["a0"]
    finally:
        store.close()


def test_reopening_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "corral.db"
    store = SQLiteStore(path, durability="full")
    store.write([InsertJobs([JobRow("a", "n", "q", 3, JobState.QUEUED, 1.0, b"spec")])])
    store.close()
    reopened = SQLiteStore(path)
    try:
        assert reopened.get_job("a") == JobRow("a", "n", "q", 3, JobState.QUEUED, 1.0, b"spec")
    finally:
        reopened.close()


def test_a_database_of_schema_1_gains_the_attempts_truncation_on_open(tmp_path: Path) -> None:
    path = tmp_path / "corral.db"
    store = SQLiteStore(path)
    store.write([SaveAttempt("a", Attempt(number=1, worker="w"))])
    store.close()
    with sqlite3.connect(path) as connection:  # as the first corral wrote it
        drop_primitive_tables(connection)
        connection.execute("ALTER TABLE attempts DROP COLUMN truncated")
        connection.execute("DROP INDEX jobs_by_finished")
        connection.execute("PRAGMA user_version = 1")
    connection.close()
    reopened = SQLiteStore(path)
    try:
        assert reopened.get_attempts("a") == [Attempt(number=1, worker="w")]
        cut = Attempt(number=2, truncated={"stderr": 7})
        reopened.write([SaveAttempt("a", cut)])
        assert reopened.get_attempts("a")[1] == cut
    finally:
        reopened.close()


def test_a_database_of_schema_2_gains_the_index_purging_walks(tmp_path: Path) -> None:
    path = tmp_path / "corral.db"
    store = SQLiteStore(path)
    old = JobRow("J1", "old", "default", 0, JobState.FAILED, 1.0, b"spec", finished=5.0)
    store.write([InsertJobs([old])])
    store.close()
    with sqlite3.connect(path) as connection:  # as corral wrote it before purging existed
        drop_primitive_tables(connection)
        connection.execute("DROP INDEX jobs_by_finished")
        connection.execute("PRAGMA user_version = 2")
    connection.close()
    reopened = SQLiteStore(path)
    try:
        assert reopened.finished_before(10.0, None, 10) == ["J1"]
        plan = reopened._reader().execute(
            "EXPLAIN QUERY PLAN SELECT finished, id FROM jobs WHERE state = 'failed'"
            " AND finished < 10 ORDER BY finished LIMIT 5"
        )
        assert "jobs_by_finished" in " ".join(str(row) for row in plan)
    finally:
        reopened.close()


_ADDED_IN = {
    4: ("primitives", "primitive_items", "primitive_holders", "primitive_entries"),
    5: ("flows", "flow_versions", "flow_runs", "flow_run_jobs", "flow_buffered"),
}


def drop_primitive_tables(connection: sqlite3.Connection, schema: int = 3) -> None:
    """Make the database as corral wrote it at `schema` (3: before named primitives and flows):
    drop the tables added after it."""
    for version, tables in _ADDED_IN.items():
        if version > schema:
            for table in tables:
                connection.execute(f"DROP TABLE {table}")


def test_a_database_of_schema_3_gains_the_primitive_tables(tmp_path: Path) -> None:
    path = tmp_path / "corral.db"
    store = SQLiteStore(path)
    store.write([InsertJobs([JobRow("J1", "n", "q", 0, JobState.QUEUED, 1.0, b"spec")])])
    store.close()
    with sqlite3.connect(path) as connection:
        drop_primitive_tables(connection)
        connection.execute("PRAGMA user_version = 3")
    connection.close()
    reopened = SQLiteStore(path)
    try:
        assert [row.id for row in reopened.load_active()] == ["J1"]
        reopened.write(
            [
                DeclarePrimitive("q", PrimitiveKind.QUEUE, b"options"),
                PushItems("q", [ItemRow(0, b"", b"item")]),
            ]
        )
        [queue] = reopened.load_primitives()
        assert (queue.name, queue.unfinished, queue.items) == ("q", 1, [ItemRow(0, b"", b"item")])
    finally:
        reopened.close()
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    connection.close()


def test_a_database_of_schema_4_gains_the_flow_tables(tmp_path: Path) -> None:
    path = tmp_path / "corral.db"
    SQLiteStore(path).close()
    with sqlite3.connect(path) as connection:
        drop_primitive_tables(connection, schema=4)
        connection.execute("PRAGMA user_version = 4")
    connection.close()
    reopened = SQLiteStore(path)
    try:
        flow = FlowRow("etl", 1, "f1", b"definition", 1.0)
        reopened.write([SaveFlow(flow)])
        assert reopened.get_flow("etl") == flow
    finally:
        reopened.close()


def test_a_database_of_schema_5_gains_the_cancel_of_its_runs(tmp_path: Path) -> None:
    path = tmp_path / "corral.db"
    SQLiteStore(path).close()
    with sqlite3.connect(path) as connection:
        connection.execute("ALTER TABLE flow_runs DROP COLUMN cancelled")
        connection.execute("PRAGMA user_version = 5")
    connection.close()
    reopened = SQLiteStore(path)
    try:
        reopened.write([SaveFlow(FlowRow("etl", 1, "f1", b"definition", 1.0))])
        run = FlowRunRow("R1", "etl", 1, FlowRunState.RUNNING, 1.0, b"\x80")
        reopened.write([InsertRun(run), CancelRun("R1")])
        stored = reopened.get_run("R1")
        assert stored is not None and stored.cancelled
    finally:
        reopened.close()


def test_a_database_of_schema_6_keeps_its_items_in_order_numbered_anew(tmp_path: Path) -> None:
    path = tmp_path / "corral.db"
    SQLiteStore(path).close()
    with sqlite3.connect(path) as connection:  # schema 6: items numbered within their queue
        connection.execute("DROP TABLE primitive_items")
        connection.execute(
            "CREATE TABLE primitive_items (name TEXT NOT NULL, seq INTEGER NOT NULL, key BLOB"
            " NOT NULL, data BLOB NOT NULL, delivery INTEGER, lease REAL, holder TEXT,"
            " PRIMARY KEY (name, seq))"
        )
        for name in ("b", "a"):
            connection.execute(
                "INSERT INTO primitives (name, kind, options) VALUES (?, 'queue', x'')", (name,)
            )
        rows = [("b", 1, b"", b"b1", None, None, None), ("b", 0, b"", b"b0", 3, 9.0, "c1")]
        rows += [("a", 5, b"k", b"a5", None, None, None)]
        connection.executemany("INSERT INTO primitive_items VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        connection.execute("PRAGMA user_version = 6")
    connection.close()
    reopened = SQLiteStore(path)
    try:
        a, b = reopened.load_primitives()
        assert a.items == [ItemRow(1, b"k", b"a5")]
        assert b.items == [ItemRow(2, b"", b"b0", 3, 9.0, "c1"), ItemRow(3, b"", b"b1")]
    finally:
        reopened.close()


def test_bad_files_and_options_are_refused_clearly(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ConfigError, match="is not a corral database"):
        SQLiteStore(garbage)

    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as connection:
        connection.execute("CREATE TABLE things (x)")
    connection.close()
    with pytest.raises(ConfigError, match="not corral's"):
        SQLiteStore(foreign)

    newer = tmp_path / "newer.db"
    SQLiteStore(newer).close()
    with sqlite3.connect(newer) as connection:
        connection.execute("PRAGMA user_version = 999")
    connection.close()
    with pytest.raises(ConfigError, match="newer corral"):
        SQLiteStore(newer)

    with pytest.raises(ConfigError, match="does not exist"):
        SQLiteStore(tmp_path / "missing" / "corral.db")
    with pytest.raises(ConfigError, match="durability"):
        SQLiteStore(tmp_path / "x.db", durability="sometimes")  # type: ignore[arg-type]


def test_a_full_disk_refuses_a_batch_whole_and_takes_it_once_there_is_room(
    tmp_path: Path,
) -> None:
    with small_tmpfs(tmp_path / "disk", "1m") as disk:
        store = SQLiteStore(disk / "corral.db")
        try:
            filler = fill_disk(disk, "filler", leave=64 * 1024)
            for number in range(10_000):
                rows = [
                    JobRow(f"J{number:05d}-{i}", "n", "q", 0, JobState.QUEUED, 1.0, b"s" * 1000)
                    for i in range(10)
                ]
                try:
                    store.write([InsertJobs(rows)])
                except StoreUnavailable as error:
                    refused, message = rows, str(error)
                    break
            else:
                pytest.fail("the disk never filled up")
            assert f"the disk holding {disk} is full; free space there" in message
            assert store.get_job(refused[0].id) is None  # none of the batch was applied
            filler.unlink()
            store.write([InsertJobs(refused)])
            assert store.get_job(refused[-1].id) is not None
        finally:
            store.close()
