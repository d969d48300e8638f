"""How jobs pass between the store and the rest of the server: what is stored of a spec, the
scheduler's record of a stored job, and the API's and the client stream's views of it.

Each is built in one function here and called from every path (submit, restart, retry, the API),
so that no path can store or rebuild a job differently from another.
"""

from __future__ import annotations

from typing import Any

import msgpack

from corral import protocol as p
from corral.constants import DEFAULT_QUEUE
from corral.models import Attempt, JobInfo, JobSpec, JobState, WorkerInfo
from corral.server.scheduler import JobRecord, WorkerRecord
from corral.server.store.base import JobRow


def spec_fields(spec: JobSpec) -> dict[str, Any]:
    """What is stored of a validated spec: its fields that differ from the defaults, as plain
    msgpack data (bytes arguments stay bytes). Every path stores this, never what a client sent,
    so that a stored spec always reads back as the validated one."""
    return spec.model_dump(exclude_defaults=True)


def decode_spec(payload: bytes) -> JobSpec:
    return JobSpec.model_validate(msgpack.unpackb(payload, raw=False))


def job_record(job_id: str, fields: dict[str, Any], payload: bytes, attempts: int = 0) -> JobRecord:
    """The scheduler's view of a job, from its spec_fields and their encoding `payload`: the one
    place that builds it, for submissions, restarts and retries alike.

    No validation here: a restart builds a million of these, from specs validated at submit.
    The defaults are JobSpec's, as spec_fields leaves them out.
    """
    return JobRecord(
        id=job_id,
        queue=fields.get("queue", DEFAULT_QUEUE),
        payload=payload,
        priority=fields.get("priority", 0),
        tags=frozenset(fields.get("tags", ())),
        retries=fields.get("retries", 0),
        idempotent=fields.get("idempotent", True),
        ready_at=fields.get("not_before") or 0.0,
        attempts=attempts,
    )


def record_from_row(row: JobRow) -> JobRecord:
    """The scheduler's view of a stored job (used on restart and on retry)."""
    try:
        fields = msgpack.unpackb(row.spec, raw=False)
    except (ValueError, msgpack.UnpackException):
        fields = None
    if not isinstance(fields, dict):
        # Not a spec at all (an altered database): queue it anyway, so that one bad row cannot
        # stop the server from starting; the worker given it fails it, saying why.
        fields = {"queue": row.queue}
    return job_record(row.id, fields, row.spec, row.attempts)


def job_info(row: JobRow, attempts: list[Attempt]) -> JobInfo:
    try:
        spec: JobSpec | None = decode_spec(row.spec)
    except (ValueError, msgpack.UnpackException):  # ValidationError is a ValueError
        spec = None  # one such job must not make every listing fail
    return JobInfo(
        id=row.id,
        name=row.name,
        state=row.state,
        spec=spec,
        created=row.created,
        started=row.started,
        finished=row.finished,
        worker=row.worker,
        attempts=attempts,
        result=msgpack.unpackb(row.result, raw=False) if row.result is not None else None,
        error_type=row.error_type,
        error_message=row.error_message,
        traceback=row.traceback,
        exit_code=row.exit_code,
    )


def done_frame(row: JobRow) -> p.Done:
    result = msgpack.unpackb(row.result, raw=False) if row.result is not None else None
    return p.Done(
        row.id,
        row.state.value,
        result,
        row.error_type,
        row.error_message,
        row.traceback,
        row.exit_code,
    )


def reported_attempt(report: p.ResultReport, worker_id: str, host: str) -> Attempt:
    """The history's record of an attempt, as its worker reported it."""
    return Attempt(
        number=report.attempt,
        worker=worker_id,
        host=host,
        pid=report.pid,
        started=report.started,
        finished=report.finished,
        state=report.state,
        exit_code=report.exit_code,
        error_type=report.error_type,
        error_message=report.error_message,
        traceback=report.traceback,
        truncated=report.truncated or {},
    )


def unreported_attempt(
    number: int, worker_id: str | None, now: float, state: JobState, reason: str | None
) -> Attempt:
    """The history's record of an attempt that ended on a worker that will never report it
    (lost, handed back, cancelled as its lease ran out): when, how and why it ended."""
    return Attempt(number=number, worker=worker_id, finished=now, state=state, error_message=reason)


def worker_info(worker: WorkerRecord, hello: p.Hello | None) -> WorkerInfo:
    """The API's view of a worker: the scheduler's record, and its hello while connected."""
    return WorkerInfo(
        id=worker.id,
        host=hello.host if hello else "?",
        pid=hello.pid if hello else 0,
        queues=list(worker.queues),
        tags=sorted(worker.tags),
        concurrency=hello.concurrency if hello else 0,
        running=worker.running(),
        held=len(worker.inflight) - worker.running(),
        connected=worker.connected,
        last_seen=worker.last_seen,
    )
