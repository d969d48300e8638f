"""SQLiteStore: the embedded default Store, one database file in WAL mode.

Writes go through one writer connection, one transaction per `write()` call (the server's group
commit puts many callers' mutations into each). Reads use one connection per reading thread, so
API reads never wait for the writer: in WAL mode readers see the last committed transaction.

Durability: `durability="normal"` (the default) runs WAL with synchronous=NORMAL: a transaction is
in the operating system's hands when `write()` returns, so it survives the server being killed
(kill -9, OOM killer, a crash), and the database is never corrupted, but an operating system crash
or power loss may lose the last transactions before the next checkpoint. `durability="full"` adds
an fsync per transaction (synchronous=FULL), which survives power loss too, at a cost of one disk
flush per group commit.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import os
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

from corral.errors import ConfigError, StoreUnavailable
from corral.models import Attempt, JobState, QueueOrdering
from corral.server.lockfile import LockHeld, hold_lock
from corral.server.store import sqlite_flows
from corral.server.store.base import (
    AppendLog,
    DeleteJobs,
    DuplicateJob,
    InsertJobs,
    JobFilter,
    JobRow,
    LogChunk,
    Mutation,
    PrimitiveRow,
    SaveAttempt,
    SaveQueue,
    Store,
    UpdateJob,
    finished_states,
    fit_log,
)
from corral.server.store.flow_rows import FlowMutation, FlowRow, FlowRunRow, ScheduleRow
from corral.server.store.sqlite_flows import FLOW_CANCEL_COLUMN, FLOW_SCHEMA, apply_flow
from corral.server.store.sqlite_primitives import (
    ITEMS_BY_SEQ_MIGRATION,
    PRIMITIVE_SCHEMA,
    apply_primitive,
    load_primitives,
    taken_later,
)

Durability = Literal["normal", "full"]

#: Stored in PRAGMA user_version; bump it with a migration when the schema changes.
SCHEMA_VERSION = 7

# Purging walks finished jobs of one state, longest finished first. Only finished jobs have a
# `finished` time, so queued and running ones (the hot path's inserts) add nothing to it: it
# costs one index entry per job as it finishes.
_FINISHED_INDEX = (
    "CREATE INDEX jobs_by_finished ON jobs (state, finished) WHERE finished IS NOT NULL"
)
_SCHEMA: tuple[str, ...] = (
    """CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        queue TEXT NOT NULL,
        priority INTEGER NOT NULL,
        state TEXT NOT NULL,
        created REAL NOT NULL,
        started REAL,
        finished REAL,
        worker TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        exit_code INTEGER,
        error_type TEXT,
        error_message TEXT,
        traceback TEXT,
        spec BLOB NOT NULL,
        result BLOB
    )""",
    # Listing by state or queue walks these newest-first; several states are merged by id from
    # one range each (UNION ALL), which is also how restart reads queued and running jobs in id
    # order without sorting. count_by_state reads only jobs_by_state. Name filters are substring
    # matches, which no index helps: they scan newest-first until the page is full.
    "CREATE INDEX jobs_by_state ON jobs (state, id)",
    "CREATE INDEX jobs_by_queue ON jobs (queue, id)",
    _FINISHED_INDEX,
    """CREATE TABLE attempts (
        job_id TEXT NOT NULL,
        number INTEGER NOT NULL,
        worker TEXT,
        host TEXT,
        pid INTEGER,
        started REAL,
        finished REAL,
        state TEXT,
        exit_code INTEGER,
        error_type TEXT,
        error_message TEXT,
        traceback TEXT,
        truncated TEXT,
        PRIMARY KEY (job_id, number)
    ) WITHOUT ROWID""",
    # Output is stored as appended chunks, so an append never rewrites what came before;
    # log_streams holds each stream's size and whether anything past the cap was dropped.
    """CREATE TABLE logs (
        job_id TEXT NOT NULL,
        stream TEXT NOT NULL,
        start INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (job_id, stream, start)
    )""",
    """CREATE TABLE log_streams (
        job_id TEXT NOT NULL,
        stream TEXT NOT NULL,
        size INTEGER NOT NULL,
        truncated INTEGER NOT NULL,
        PRIMARY KEY (job_id, stream)
    ) WITHOUT ROWID""",
    "CREATE TABLE queues (name TEXT PRIMARY KEY, ordering TEXT NOT NULL) WITHOUT ROWID",
)
_SCHEMA += PRIMITIVE_SCHEMA + FLOW_SCHEMA + (FLOW_CANCEL_COLUMN,)
# _MIGRATIONS[n - 1] holds the statements that take a database of schema version n to n + 1.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # Bytes cut from the output per stream, as JSON; NULL when nothing was cut.
    ("ALTER TABLE attempts ADD COLUMN truncated TEXT",),
    (_FINISHED_INDEX,),
    PRIMITIVE_SCHEMA,
    FLOW_SCHEMA,
    (FLOW_CANCEL_COLUMN,),
    ITEMS_BY_SEQ_MIGRATION,
)

_JOB_COLUMNS = (
    "id, name, queue, priority, state, created, spec, started, finished, worker, attempts,"
    " result, error_type, error_message, traceback, exit_code"
)
_INSERT_JOB = f"INSERT INTO jobs ({_JOB_COLUMNS}) VALUES ({', '.join('?' * 16)})"
# ?3 is true on a transition back to queued: the fields then take the given value, None included.
_UPDATE_JOB = """UPDATE jobs SET
    state = ?1,
    attempts = coalesce(?2, attempts),
    started = CASE WHEN ?3 THEN ?4 ELSE coalesce(?4, started) END,
    finished = CASE WHEN ?3 THEN ?5 ELSE coalesce(?5, finished) END,
    worker = CASE WHEN ?3 THEN ?6 ELSE coalesce(?6, worker) END,
    result = CASE WHEN ?3 THEN ?7 ELSE coalesce(?7, result) END,
    error_type = CASE WHEN ?3 THEN ?8 ELSE coalesce(?8, error_type) END,
    error_message = CASE WHEN ?3 THEN ?9 ELSE coalesce(?9, error_message) END,
    traceback = CASE WHEN ?3 THEN ?10 ELSE coalesce(?10, traceback) END,
    exit_code = CASE WHEN ?3 THEN ?11 ELSE coalesce(?11, exit_code) END
WHERE id = ?12"""
_SAVE_ATTEMPT = "INSERT OR REPLACE INTO attempts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_ATTEMPT_FIELDS = (
    "number",
    "worker",
    "host",
    "pid",
    "started",
    "finished",
    "state",
    "exit_code",
    "error_type",
    "error_message",
    "traceback",
    "truncated",
)
_ACTIVE_COLUMNS = "id, name, queue, priority, state, created, spec, started, worker, attempts"
_LOAD_ACTIVE = (
    f"SELECT {_ACTIVE_COLUMNS} FROM jobs WHERE state = 'queued'"
    f" UNION ALL SELECT {_ACTIVE_COLUMNS} FROM jobs WHERE state = 'running' ORDER BY id"
)
_STATES = {state.value: state for state in JobState}
_QUEUED = JobState.QUEUED.value


class SQLiteStore(Store):
    """The Store in one SQLite database file; see the module docstring for durability."""

    def __init__(
        self, path: Path | str, durability: Durability = "normal", *, holder: str = ""
    ) -> None:
        """`holder` says who has the database open (written into its lock file, so that a second
        process that tries to open it is told who has it)."""
        if durability not in ("normal", "full"):
            raise ConfigError(f"SQLite durability must be 'normal' or 'full', not {durability!r}")
        self.path = Path(path)
        self._synchronous = "FULL" if durability == "full" else "NORMAL"
        self.commits_quickly = durability == "normal"  # no disk flush per transaction
        if not self.path.parent.is_dir():
            raise ConfigError(
                f"cannot create the database {self.path}: directory {self.path.parent} does not"
                " exist; create it or choose another path"
            )
        self._lock = _lock_database(self.path, holder)
        self._write_lock = threading.Lock()
        self._readers_lock = threading.Lock()
        self._readers: list[sqlite3.Connection] = []
        self._local = threading.local()
        try:
            _make_private(self.path)
            self._writer = self._connect()
        except BaseException:
            self._lock.close()
            raise
        try:
            self._set_up_writer()
        except BaseException as error:
            self._writer.close()
            self._lock.close()
            if isinstance(error, sqlite3.OperationalError) and (
                unavailable := self._unavailable(error)
            ):
                raise unavailable from error
            raise

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: transactions are begun and committed explicitly, nothing implicit.
        connection = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, cached_statements=64
        )
        connection.execute("PRAGMA busy_timeout = 10000")
        return connection

    def _set_up_writer(self) -> None:
        connection = self._writer
        try:
            mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.DatabaseError as error:
            raise ConfigError(
                f"{self.path} is not a corral database ({error}); point the store elsewhere"
            ) from error
        if mode != "wal":
            raise ConfigError(
                f"{self.path}: SQLite cannot use WAL mode here (got {mode!r}); put the database"
                " on a local filesystem"
            )
        connection.execute(f"PRAGMA synchronous = {self._synchronous}")
        connection.execute("PRAGMA cache_size = -32768")  # KiB: keeps the indexes' hot pages
        with self._transaction():
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                if connection.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                    raise ConfigError(
                        f"{self.path} holds tables that are not corral's; point the store elsewhere"
                    )
                for statement in _SCHEMA:
                    connection.execute(statement)
                connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version > SCHEMA_VERSION:
                raise ConfigError(
                    f"{self.path} was written by a newer corral (schema {version}, this one reads"
                    f" {SCHEMA_VERSION}); upgrade corral"
                )
            elif version < SCHEMA_VERSION:
                for migration in _MIGRATIONS[version - 1 :]:
                    for statement in migration:
                        connection.execute(statement)
                connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        connection = self._writer
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield connection
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise

    def _reader(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._connect()
            connection.execute("PRAGMA query_only = ON")
            self._local.connection = connection
            with self._readers_lock:
                self._readers.append(connection)
        return connection

    def write(self, batch: Sequence[Mutation]) -> None:
        with self._write_lock:
            try:
                with self._transaction() as connection:
                    _apply(connection, batch)
            except sqlite3.IntegrityError as error:
                duplicate = self._find_duplicate(batch)
                if duplicate is None:
                    raise
                raise DuplicateJob(
                    f"job {duplicate} already exists; submit it with a new id"
                ) from error
            except sqlite3.OperationalError as error:
                unavailable = self._unavailable(error)
                if unavailable is None:
                    raise
                raise unavailable from error

    def _unavailable(self, error: sqlite3.OperationalError) -> StoreUnavailable | None:
        """The StoreUnavailable for an error about the disk or the file's lock, else None."""
        code = error.sqlite_errorcode & 0xFF  # the primary code of an extended one
        where = self.path.parent
        if code == sqlite3.SQLITE_FULL:
            cause = f"the disk holding {where} is full; free space there"
        elif code == sqlite3.SQLITE_IOERR:
            cause = f"writing {self.path} failed; check the disk holding {where} (full? failing?)"
        elif code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            cause = f"another process holds the lock on {self.path}; stop it"
        else:
            return None
        return StoreUnavailable(
            f"the server cannot store anything ({error}): {cause}, then try again;"
            " what it has already accepted is kept and stored once writes succeed"
        )

    def _find_duplicate(self, batch: Sequence[Mutation]) -> str | None:
        """After a failed batch was rolled back: the id that made it fail, if it was one."""
        ids = [job.id for m in batch if isinstance(m, InsertJobs) for job in m.jobs]
        repeated = [job_id for job_id, count in Counter(ids).items() if count > 1]
        if repeated:
            return repeated[0]
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            row = self._writer.execute(
                f"SELECT id FROM jobs WHERE id IN ({', '.join('?' * len(chunk))}) LIMIT 1", chunk
            ).fetchone()
            if row is not None:
                return str(row[0])
        return None

    def get_job(self, job_id: str) -> JobRow | None:
        row = (
            self._reader()
            .execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
            .fetchone()
        )
        return None if row is None else _job_from_row(row)

    def get_attempts(self, job_id: str) -> list[Attempt]:
        rows = self._reader().execute(
            f"SELECT {', '.join(_ATTEMPT_FIELDS)} FROM attempts WHERE job_id = ? ORDER BY number",
            (job_id,),
        )
        return [_attempt_from_row(row) for row in rows]

    def list_jobs(self, filter: JobFilter) -> list[JobRow]:
        clauses: list[str] = []
        params: list[Any] = []
        if filter.queue is not None:
            clauses.append("queue = ?")
            params.append(filter.queue)
        if filter.name is not None:
            clauses.append("instr(name, ?) > 0")  # case-sensitive, like Python's `in`
            params.append(filter.name)
        if filter.before is not None:
            clauses.append("id < ?")
            params.append(filter.before)
        if filter.ids is not None:
            clauses.append(f"id IN ({', '.join('?' * len(filter.ids))})")
            params.extend(filter.ids)
        if filter.states is None:
            where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
            query = f"SELECT {_JOB_COLUMNS} FROM jobs{where}"
        else:
            # One index range per state, merged by id: no sort of every matching row.
            states = sorted({JobState(state).value for state in filter.states})
            if not states:
                return []
            where = " AND ".join(["state = ?", *clauses])
            query = " UNION ALL ".join(
                [f"SELECT {_JOB_COLUMNS} FROM jobs WHERE {where}"] * len(states)
            )
            params = [value for state in states for value in (state, *params)]
        rows = self._reader().execute(f"{query} ORDER BY id DESC LIMIT ?", (*params, filter.limit))
        return [_job_from_row(row) for row in rows]

    def load_active(self) -> Iterator[JobRow]:
        states = _STATES
        for (
            job_id,
            name,
            queue,
            priority,
            state,
            created,
            spec,
            started,
            worker,
            attempts,
        ) in self._reader().execute(_LOAD_ACTIVE):
            yield JobRow(
                job_id, name, queue, priority, states[state], created, spec, started, None,
                worker, attempts,
            )  # fmt: skip

    def finished_before(
        self, before: float, states: Sequence[JobState] | None, limit: int
    ) -> list[str]:
        # One index range per state, each cut at `limit`, merged here: a UNION ALL ordered by
        # `finished` would sort every matching row first.
        connection = self._reader()
        found: list[tuple[float, str]] = []
        for state in finished_states(states):
            found += connection.execute(
                "SELECT finished, id FROM jobs WHERE state = ? AND finished < ?"
                " ORDER BY finished LIMIT ?",
                (state.value, before, limit),
            ).fetchall()
        return [job_id for _, job_id in heapq.nsmallest(limit, found)]

    def read_log(self, job_id: str, stream: str, offset: int = 0) -> LogChunk:
        connection = self._reader()
        connection.execute("BEGIN")  # one snapshot for the chunks and the truncation flag
        try:
            row = connection.execute(
                "SELECT truncated FROM log_streams WHERE job_id = ? AND stream = ?",
                (job_id, stream),
            ).fetchone()
            chunks = connection.execute(
                "SELECT start, data FROM logs WHERE job_id = ? AND stream = ?"
                " AND start + length(data) > ? ORDER BY start",
                (job_id, stream, offset),
            ).fetchall()
        finally:
            connection.execute("COMMIT")
        if row is None:
            return LogChunk(b"", False)
        data = b"".join(chunk for _, chunk in chunks)
        skip = offset - chunks[0][0] if chunks else 0
        return LogChunk(data[max(skip, 0) :], bool(row[0]))

    def log_size(self, job_id: str, stream: str) -> int:
        row = (
            self._reader()
            .execute(
                "SELECT size FROM log_streams WHERE job_id = ? AND stream = ?", (job_id, stream)
            )
            .fetchone()
        )
        return 0 if row is None else int(row[0])

    def list_queues(self) -> dict[str, QueueOrdering]:
        rows = self._reader().execute("SELECT name, ordering FROM queues ORDER BY name")
        return {name: QueueOrdering(ordering) for name, ordering in rows}

    def count_by_state(self) -> dict[JobState, int]:
        rows = self._reader().execute("SELECT state, count(*) FROM jobs GROUP BY state")
        return {_STATES[state]: count for state, count in rows}

    def load_primitives(self) -> list[PrimitiveRow]:
        with self._snapshot() as connection:  # the declarations and their rows at one moment
            return load_primitives(connection)

    def get_flow(self, name: str, version: int | None = None) -> FlowRow | None:
        return sqlite_flows.get_flow(self._reader(), name, version)

    def list_flows(self, after: str | None = None, limit: int = 100) -> list[FlowRow]:
        return sqlite_flows.list_flows(self._reader(), after, limit)

    def flow_versions(self, name: str) -> list[FlowRow]:
        return sqlite_flows.flow_versions(self._reader(), name)

    def get_run(self, run_id: str) -> FlowRunRow | None:
        with self._snapshot() as connection:  # the run and its jobs as of one moment
            return sqlite_flows.get_run(connection, run_id)

    def list_runs(self, flow: str, before: str | None = None, limit: int = 100) -> list[FlowRunRow]:
        return sqlite_flows.list_runs(self._reader(), flow, before, limit)

    def load_active_runs(self) -> list[FlowRunRow]:
        with self._snapshot() as connection:
            return sqlite_flows.load_active_runs(connection)

    def load_schedules(self) -> list[ScheduleRow]:
        with self._snapshot() as connection:
            return sqlite_flows.load_schedules(connection)

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """This thread's reader, inside one read transaction: reads that see one moment."""
        connection = self._reader()
        connection.execute("BEGIN")
        try:
            yield connection
        finally:
            connection.execute("COMMIT")

    def close(self) -> None:
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for connection in readers:
            connection.close()
        with self._write_lock:
            self._writer.close()
        self._lock.close()


def _lock_database(path: Path, holder: str) -> TextIO:
    """Hold `<database>.lock` exclusively while the store is open: two servers on one database
    would both run every job. Named after the resolved path, so every way of naming the
    database (symbolic links, `..`) finds the same lock."""
    lock_path = path.resolve().with_name(path.resolve().name + ".lock")
    try:
        return hold_lock(lock_path, ", ".join(filter(None, [f"pid {os.getpid()}", holder])))
    except LockHeld as held:
        raise ConfigError(
            f"the database {path} is in use by another process ({held.owner}); stop it, or "
            "point this one at another database"
        ) from None


def _make_private(path: Path) -> None:
    """Create the database mode 0600 and make an existing one, its -wal and -shm 0600, whatever
    the directory's mode and the umask: SQLite gives the -wal and -shm files the database's mode,
    and jobs' specs (their env included) are in them."""
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT, 0o600))
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            os.chmod(name, 0o600)
        except FileNotFoundError:
            pass
        except PermissionError:
            raise ConfigError(
                f"cannot make {name} readable by its owner only: it belongs to another user; "
                "chown it to the user corral runs as"
            ) from None


def _apply(connection: sqlite3.Connection, batch: Sequence[Mutation]) -> None:
    """Apply `batch` inside the open transaction with one executemany per kind of row.

    Rows of different tables do not depend on each other, and all inserts may run before all
    updates unless an update names a job inserted after it (then the update must stay a no-op),
    so the batch is regrouped that way and its effect is the same as applying it in order. A
    DeleteJobs first writes everything before it, so that it deletes what the batch wrote.
    """
    pending = _Pending()
    taken = taken_later(batch)
    for index, mutation in enumerate(batch):
        if isinstance(mutation, InsertJobs):
            for job in mutation.jobs:
                if job.id in pending.updated_ids:
                    _write_jobs(connection, pending.inserts, pending.updates)
                    pending.updated_ids.clear()
                pending.inserts.append(
                    (
                        job.id, job.name, job.queue, job.priority, job.state, job.created,
                        job.spec, job.started, job.finished, job.worker, job.attempts, job.result,
                        job.error_type, job.error_message, job.traceback, job.exit_code,
                    )
                )  # fmt: skip
        elif isinstance(mutation, UpdateJob):
            pending.updated_ids.add(mutation.id)
            pending.updates.append(
                (
                    mutation.state, mutation.attempts, mutation.state == _QUEUED,
                    mutation.started, mutation.finished, mutation.worker, mutation.result,
                    mutation.error_type, mutation.error_message, mutation.traceback,
                    mutation.exit_code, mutation.id,
                )
            )  # fmt: skip
        elif isinstance(mutation, SaveAttempt):
            attempt = mutation.attempt
            pending.attempts.append(
                (
                    mutation.job_id, attempt.number, attempt.worker, attempt.host, attempt.pid,
                    attempt.started, attempt.finished, attempt.state, attempt.exit_code,
                    attempt.error_type, attempt.error_message, attempt.traceback,
                    json.dumps(attempt.truncated) if attempt.truncated else None,
                )
            )  # fmt: skip
        elif isinstance(mutation, AppendLog):
            pending.logs.setdefault((mutation.job_id, mutation.stream), []).append(mutation.data)
        elif isinstance(mutation, SaveQueue):
            pending.queues.append((mutation.name, QueueOrdering(mutation.ordering).value))
        elif isinstance(mutation, DeleteJobs):
            pending.write(connection)
            _delete_jobs(connection, mutation.ids)
        elif isinstance(mutation, FlowMutation):  # other tables, written in order as they come
            apply_flow(connection, mutation)
        else:
            apply_primitive(connection, mutation, taken.get(index, frozenset()))
    pending.write(connection)


@dataclass(slots=True)
class _Pending:
    """Rows of a batch not yet written, grouped by kind (see _apply)."""

    inserts: list[tuple[Any, ...]] = field(default_factory=list)
    updates: list[tuple[Any, ...]] = field(default_factory=list)
    updated_ids: set[str] = field(default_factory=set)
    attempts: list[tuple[Any, ...]] = field(default_factory=list)
    logs: dict[tuple[str, str], list[bytes]] = field(default_factory=dict)
    queues: list[tuple[str, str]] = field(default_factory=list)

    def write(self, connection: sqlite3.Connection) -> None:
        """Write every pending row and forget them."""
        _write_jobs(connection, self.inserts, self.updates)
        self.updated_ids.clear()
        if self.attempts:
            connection.executemany(_SAVE_ATTEMPT, self.attempts)
            self.attempts.clear()
        for (job_id, stream), pieces in self.logs.items():
            _append_log(connection, job_id, stream, b"".join(pieces))
        self.logs.clear()
        if self.queues:
            connection.executemany("INSERT OR REPLACE INTO queues VALUES (?, ?)", self.queues)
            self.queues.clear()


def _delete_jobs(connection: sqlite3.Connection, job_ids: Sequence[str]) -> None:
    """Delete the finished jobs among `job_ids`, their attempts and their output."""
    for start in range(0, len(job_ids), 500):
        chunk = job_ids[start : start + 500]
        rows = connection.execute(
            f"SELECT id FROM jobs WHERE id IN ({', '.join('?' * len(chunk))})"
            " AND state NOT IN ('queued', 'running')",
            chunk,
        ).fetchall()
        for table, column in _JOB_TABLES:
            connection.executemany(f"DELETE FROM {table} WHERE {column} = ?", rows)


# Every table holding a job's rows, and the column naming the job.
_JOB_TABLES = (
    ("attempts", "job_id"),
    ("logs", "job_id"),
    ("log_streams", "job_id"),
    ("jobs", "id"),
)


def _write_jobs(
    connection: sqlite3.Connection, inserts: list[tuple[Any, ...]], updates: list[tuple[Any, ...]]
) -> None:
    """Run the pending inserts, then the pending updates, and empty both lists."""
    if inserts:
        connection.executemany(_INSERT_JOB, inserts)
        inserts.clear()
    if updates:
        connection.executemany(_UPDATE_JOB, updates)
        updates.clear()


def _append_log(connection: sqlite3.Connection, job_id: str, stream: str, data: bytes) -> None:
    row = connection.execute(
        "SELECT size, truncated FROM log_streams WHERE job_id = ? AND stream = ?", (job_id, stream)
    ).fetchone()
    size, truncated = (row[0], bool(row[1])) if row else (0, False)
    kept, dropped = fit_log(size, data)
    if kept:
        connection.execute("INSERT INTO logs VALUES (?, ?, ?, ?)", (job_id, stream, size, kept))
    if row is None or kept or (dropped and not truncated):
        connection.execute(
            "INSERT OR REPLACE INTO log_streams VALUES (?, ?, ?, ?)",
            (job_id, stream, size + len(kept), truncated or dropped),
        )


def _attempt_from_row(row: tuple[Any, ...]) -> Attempt:
    """An Attempt from the columns of _ATTEMPT_FIELDS, in that order."""
    fields = dict(zip(_ATTEMPT_FIELDS, row, strict=True))
    fields["truncated"] = json.loads(fields["truncated"]) if fields["truncated"] else {}
    return Attempt(**fields)


def _job_from_row(row: tuple[Any, ...]) -> JobRow:
    """A JobRow from the columns of _JOB_COLUMNS, in that order."""
    return JobRow(row[0], row[1], row[2], row[3], _STATES[row[4]], *row[5:])
