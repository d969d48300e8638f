"""Retention: deleting finished jobs, on request (`corral purge`) and in the background.

A purge of a million jobs must not stall the server, so it takes them in batches of PURGE_BATCH:
each batch is selected on a thread (never on the event loop) and deleted through the store
writer, where it is one more request in the group commit. Submissions and results keep flowing
between batches, waiting at most for the one transaction that holds a batch.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from corral.constants import PURGE_BATCH, RETENTION_INTERVAL
from corral.models import JobState
from corral.server.engine import Engine

logger = logging.getLogger("corral.server")


async def purge_finished(
    engine: Engine, before: float, states: Sequence[JobState] | None = None
) -> int:
    """Delete every job finished before `before` (a Unix time), in any finished state or in
    `states`; returns how many were deleted."""
    store = engine.store
    deleted = 0
    while True:
        found = await asyncio.to_thread(store.finished_before, before, states, PURGE_BATCH)
        gone = await engine.delete_finished(found)
        deleted += gone
        # A batch of jobs that all ran again meanwhile deletes none: stop rather than spin.
        if len(found) < PURGE_BATCH or not gone:
            return deleted


async def keep_finished(engine: Engine, keep: float, interval: float = RETENTION_INTERVAL) -> None:
    """Forever: delete the jobs that finished more than `keep` seconds ago, every `interval`."""
    while True:
        try:
            deleted = await purge_finished(engine, engine.clock() - keep)
        except Exception:  # a failed round is retried at the next; the server goes on
            logger.exception("deleting old finished jobs failed")
        else:
            if deleted:
                logger.info("deleted %d jobs finished more than %gs ago", deleted, keep)
        await asyncio.sleep(interval)
