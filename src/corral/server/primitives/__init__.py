"""Named primitives: queues, shared state and locks, as a pure core beside the scheduler.

Like the scheduler (corral.server.scheduler) this core does no I/O and reads no clock: the
server feeds it calls and the time, and carries out what it returns (Effects): first the store
mutations that record what changed, committed in the same group-commit batches as jobs', then the
replies to the calls answered, its own or ones that waited (a get woken by a put, an acquire
woken by a release or an expired lease). A call that may wait names itself with a CallId and is
answered by a Reply, now or later; one that cannot go ahead raises at once, with nothing changed.

What it guarantees, beyond each kind's own guarantees (queues.py, locks.py, state.py):
- one name is one primitive of one kind; opening it as another kind, or a queue with another
  ordering, maxsize or ack, raises PrimitiveMismatch rather than reusing it silently;
- everything a restart must keep is in the mutations (items and their leases, unfinished
  tasks, lock holders and fencing counters, shared state, event flags); `restore` rebuilds the
  same state from the store's `load_primitives()`, leases then running a whole lease from the
  restart; waiting calls are not kept (their callers wait again when they reconnect);
- errors are the standard library's where it has one (queue.Full, queue.Empty, ValueError,
  KeyError, IndexError, threading.BrokenBarrierError), CorralError subclasses otherwise
  (InvalidName, InvalidRequest, PrimitiveMismatch, NotHeld, NotFound).

How a server drives it: `restore(store.load_primitives(), now)` on start; for each request, the
call on the primitive, then its Effects' mutations to the store writer and, once they commit, its
replies to the callers; `tick(now)` at `next_wakeup()`; `cancel(name, call, now)` for the calls
of a connection that closed. The core has changed when a call returns, so the mutations record
what is done (like a dispatch): check that the store takes writes before the call
(GroupCommitWriter.check_available) and hand them over to be stored until they are.
"""

from corral.server.primitives.common import CallId, Effects, Reply, deadline_for
from corral.server.primitives.core import Primitives
from corral.server.primitives.locks import (
    Hold,
    NamedBarrier,
    NamedEvent,
    NamedLock,
    NamedSemaphore,
)
from corral.server.primitives.queues import GotItem, NamedQueue, NewItem
from corral.server.primitives.state import SharedArray, SharedDict, SharedList, SharedValue

__all__ = [
    # the core
    "Primitives",
    "CallId",
    "Effects",
    "Reply",
    "deadline_for",
    # queues
    "NamedQueue",
    "NewItem",
    "GotItem",
    # locks
    "NamedLock",
    "NamedSemaphore",
    "NamedEvent",
    "NamedBarrier",
    "Hold",
    # shared state
    "SharedDict",
    "SharedList",
    "SharedValue",
    "SharedArray",
]
