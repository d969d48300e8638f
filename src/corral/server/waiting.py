"""Why a job waits, in words: the scheduler's answers to `corral show` and to a submit whose jobs
no connected worker could take. Asked for on demand, never on the dispatch path; pure, like the
scheduler whose records it reads."""

from __future__ import annotations

import datetime
import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from corral.constants import MAX_SUBMIT_WARNINGS, SSH_CREDENTIALS_TAG

if TYPE_CHECKING:
    from corral.server.scheduler import JobRecord, WorkerRecord


def unserved(serving: Sequence[WorkerRecord], queue: str, tags: frozenset[str]) -> str | None:
    """Why none of the workers `serving` the queue could ever take a job of it that needs
    `tags`, naming what is missing; None if one could (now, or once it has a free slot)."""
    if not serving:
        needs = f" with {_requirements(tags)}" if tags else ""
        return f"no connected worker serves queue {queue!r}{needs}"
    if any(tags <= worker.tags for worker in serving):
        return None
    missing = tags.difference(*(worker.tags for worker in serving))
    serving_queue = f"no connected worker serving queue {queue!r}"
    if missing:
        return f"{serving_queue} {_requirements(missing, verbs=True)}"
    return f"{serving_queue} has all of {_requirements(tags)}"


def submit_warnings(reasons: Mapping[str, int]) -> list[str]:
    """What to tell whoever submitted jobs that no connected worker could take: one line per
    distinct reason, with how many jobs it holds up."""
    lines = [
        f"{reason}; {'the job waits' if count == 1 else f'{count} jobs wait'} until one does"
        for reason, count in itertools.islice(reasons.items(), MAX_SUBMIT_WARNINGS)
    ]
    if len(reasons) > MAX_SUBMIT_WARNINGS:
        more = len(reasons) - MAX_SUBMIT_WARNINGS
        lines.append(f"and {more} more such reasons; `corral show ID` gives a job's")
    return lines


def queued_reason(
    job: JobRecord,
    now: float,
    serving: Sequence[WorkerRecord],
    ahead_for: Callable[[Sequence[WorkerRecord]], int],
) -> str:
    """Why a queued job has not gone to a worker; `ahead_for(takers)` counts the queued jobs
    that go before it to those workers."""
    why_unserved = unserved(serving, job.queue, job.tags)
    if job.ready_at > now:
        why = (
            f"the backoff before retry {job.failures} of {job.retries}"
            if job.failures
            else "its not_before"
        )
        delayed = f"delayed until {_utc(job.ready_at)} (in {job.ready_at - now:.0f}s), {why}"
        return delayed if why_unserved is None else f"{delayed}; then: {why_unserved}"
    if why_unserved is not None:
        return why_unserved
    takers = [worker for worker in serving if job.tags <= worker.tags]
    if any(worker.free > 0 for worker in takers):
        return "a worker that can take it has a free slot; it starts in a moment"
    slots = _count(sum(worker.capacity for worker in takers), "slot")
    if len(takers) == 1:
        busy = f"the one worker that can take it is busy, its {slots} full"
    else:
        busy = f"all {len(takers)} workers that can take it are busy, their {slots} full"
    ahead = ahead_for(takers)
    if not ahead:
        return f"{busy}; it is next in queue {job.queue!r}"
    return f"{busy}; waiting behind {_count(ahead, 'job')} in queue {job.queue!r}"


def held_reason(job: JobRecord, holder: WorkerRecord) -> str:
    """Why a job sent to `holder` has not started there."""
    if job.recalled_for is not None:
        return f"being handed back by worker {holder.id} to a worker with a free slot"
    if holder.running() < holder.slots:
        return f"sent to worker {holder.id}, which is starting it"
    slots = _count(holder.slots, "slot")
    return (
        f"held ready by worker {holder.id}, whose {slots} are busy; it starts when one "
        "frees, or goes to another worker whose slot frees first"
    )


def _requirements(tags: frozenset[str], *, verbs: bool = False) -> str:
    """Required tags as a reader knows them: `tags gpu, linux and ssh credentials 'prod'`."""
    plain = sorted(tag for tag in tags if not tag.startswith(SSH_CREDENTIALS_TAG))
    credentials = sorted(
        repr(tag[len(SSH_CREDENTIALS_TAG) :]) for tag in tags if tag.startswith(SSH_CREDENTIALS_TAG)
    )
    parts = []
    if plain:
        parts.append(("has " if verbs else "") + "tags " + ", ".join(plain))
    if credentials:
        parts.append(("holds " if verbs else "") + "ssh credentials " + ", ".join(credentials))
    return " and ".join(parts)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _utc(timestamp: float) -> str:
    when = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return when.strftime("%Y-%m-%d %H:%M:%S UTC")
