"""Defaults and limits, in one place so that they are documented once and changed once."""

from __future__ import annotations

#: Where the server listens unless told otherwise: loopback only, never all interfaces by default.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8750
DEFAULT_URL = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"

#: Directory holding the SQLite database and the token file when no --data-dir is given.
DEFAULT_DATA_DIR = "~/.local/share/corral"
TOKEN_FILE_NAME = "tokens.json"
DATABASE_FILE_NAME = "corral.db"

#: Wire protocol between worker and server; a worker speaking another version is refused.
PROTOCOL_VERSION = 4

#: Queue every job goes to unless it names another.
DEFAULT_QUEUE = "default"

#: A worker heartbeats this often; a worker silent for LEASE seconds loses its jobs.
HEARTBEAT_INTERVAL = 1.0
WORKER_LEASE = 5.0

#: Jobs a worker may hold beyond its concurrency, so that it never waits for the next one.
DEFAULT_PREFETCH = 64

#: What a worker may announce in its hello: jobs at once, jobs held (concurrency + prefetch),
#: queues and tags. A hello beyond them is refused, so one worker cannot take a whole queue.
MAX_WORKER_CONCURRENCY = 1024
MAX_WORKER_CAPACITY = MAX_WORKER_CONCURRENCY + 4096
MAX_WORKER_QUEUES = 64
MAX_WORKER_TAGS = 256

#: The server stores that a job runs this long after its worker said it started it, unless the
#: job has ended by then (its final update then says where and when it ran).
START_RECORD_DELAY = 0.05

#: Retry backoff: base * 2**(attempt-1), capped, with up to JITTER of it added at random.
RETRY_BACKOFF_BASE = 1.0
RETRY_BACKOFF_MAX = 300.0
RETRY_BACKOFF_JITTER = 0.25

#: Garbage collector thresholds for the server and workers (Python's default: 700, 10, 10). They
#: build and drop tens of thousands of small objects per second (frames, records, futures), few
#: of them in cycles; collecting the youngest generation every 700 allocations cost them 10-15%
#: of their CPU time.
GC_THRESHOLDS = (50_000, 20, 100)

#: Limits that keep one client from exhausting the server.
MAX_REQUEST_BYTES = 16 * 1024 * 1024
MAX_BATCH_JOBS = 10_000
#: Output a worker keeps per job and stream: the first half as it comes, the last half when the
#: job ends, with a line between them saying how many bytes were cut.
MAX_LOG_BYTES_PER_JOB = 1024 * 1024
#: Output the server stores per job and stream: the above, the line marking the cut, and some
#: room to spare; what comes beyond it is dropped and the log reads as truncated.
MAX_STORED_LOG_BYTES = MAX_LOG_BYTES_PER_JOB + 4096
MAX_RESULT_BYTES = 4 * 1024 * 1024
MAX_NAME_LENGTH = 256
MAX_LIST_LIMIT = 10_000
#: Job ids one client `watch` frame may carry (the client library splits larger watches), so that
#: one frame cannot hold the server's event loop for long; as many as one batch of submissions.
MAX_WATCH_IDS = MAX_BATCH_JOBS

#: corral.Executor and corral.Pool: cancel requests one of them has in flight at once (cancelling
#: a map of thousands of jobs sends thousands), and the chunks a streaming map (Executor.map,
#: Pool.imap, Pool.imap_unordered) submits ahead of the one the caller waits for, so that the
#: cluster stays busy while the client's memory stays bounded however long the iterable.
MAX_CONCURRENT_CANCELS = 32
MAP_CHUNKS_AHEAD = 256

#: Limits on one job spec, checked at submit. Together they keep a job's spec far below the
#: 16 MiB frame limit (MAX_REQUEST_BYTES), so that many fit in one frame to a worker.
#: A shell job's argv (or /bin/sh -c string), in UTF-8 bytes; Linux refuses to exec much more
#: (ARG_MAX is 2 MiB for argv and environment together by default).
MAX_COMMAND_BYTES = 1024 * 1024
#: Environment variables a job sets, and their total size ('NAME=value' in UTF-8 bytes).
MAX_ENV_VARS = 4096
MAX_ENV_BYTES = 1024 * 1024
#: A python job's args and kwargs (or its pickled function), msgpack-encoded: as large as a result.
MAX_ARGS_BYTES = MAX_RESULT_BYTES
#: Tags a job requires, and the length of each (characters).
MAX_TAGS = 64
MAX_TAG_LENGTH = 256
#: Characters of a python job's 'module:function' target.
MAX_TARGET_LENGTH = 1024
#: Characters of a job's working directory (Linux's PATH_MAX) and of the user it runs as.
MAX_PATH_LENGTH = 4096
MAX_USER_LENGTH = 256
#: A job's whole spec as stored and sent to a worker (msgpack), whatever its fields: the one rule
#: that keeps any job within a message to a worker, for fields the limits above leave open
#: (an ssh job's hosts, inventory and playbook) and for sums of them.
MAX_JOB_BYTES = MAX_REQUEST_BYTES

#: Longest error message or traceback in a result; a worker cuts longer ones to fit.
MAX_ERROR_TEXT = 64 * 1024

#: Jobs that name ssh credentials require the tag SSH_CREDENTIALS_TAG + name; workers that hold
#: those credentials carry it.
SSH_CREDENTIALS_TAG = "ssh:"
#: Reasons one submission's answer gives at most for jobs no connected worker could take (one per
#: distinct queue and tags); the last one says how many more there were.
MAX_SUBMIT_WARNINGS = 10

#: Largest WebSocket message either side of a stream sends or accepts. Senders split frames to fit
#: (protocol.pack); the margin over MAX_REQUEST_BYTES lets any one job or result go in a message.
MAX_FRAME_BYTES = MAX_REQUEST_BYTES + 1024 * 1024

#: Group commit: the store writer takes at most this many mutations per transaction.
MAX_COMMIT_BATCH = 20_000
#: While the store cannot take writes (disk full, ...), the server retries the writes that record
#: what it already did this often: from the first delay, doubling up to the second.
STORE_RETRY_DELAYS = (0.05, 1.0)
#: A write of at most this many rows that finds the store writer idle is committed at once on the
#: event loop rather than handed to the writer's thread (see GroupCommitWriter).
INLINE_COMMIT_ROWS = 64

#: Finished jobs the server keeps unless told otherwise (`corral server --keep`): seven days. It
#: deletes older ones every RETENTION_INTERVAL seconds, PURGE_BATCH jobs per store transaction,
#: so that a purge of millions leaves room for everything else between its batches.
DEFAULT_KEEP_FINISHED = 7 * 24 * 3600.0
RETENTION_INTERVAL = 60.0
PURGE_BATCH = 500

#: On SIGTERM a worker waits this long for running jobs before handing them back.
GRACEFUL_SHUTDOWN_TIMEOUT = 30.0

#: Named primitives (queues, shared state, locks): one namespace for all kinds. A name is 1 to
#: MAX_PRIMITIVE_NAME_LENGTH characters of PRIMITIVE_NAME_CHARACTERS, starting with a letter or
#: a digit, so that it reads the same in a URL, a log line and a shell.
MAX_PRIMITIVE_NAME_LENGTH = 200
PRIMITIVE_NAME_CHARACTERS = "letters, digits and . _ - : /"
#: One queue item, dict or list entry as the client encoded it; bigger data belongs in a file or
#: a job result, with its name in the item.
MAX_PRIMITIVE_ITEM_BYTES = MAX_RESULT_BYTES
#: A priority queue item's sort key (corral.sortkey), in bytes.
MAX_SORT_KEY_BYTES = 4096
#: Items one put_many or get_many moves at once, as many as one batch of job submissions.
MAX_PRIMITIVE_BATCH = MAX_BATCH_JOBS
#: Leases of locks, semaphores and items taken from an acknowledged queue: the default a client
#: asks for (it renews well before the end) and the longest one the server grants. A holder that
#: dies keeps the lock for at most its lease.
DEFAULT_PRIMITIVE_LEASE = 30.0
MAX_PRIMITIVE_LEASE = 24 * 3600.0

#: Flows (DAGs of jobs, optionally on a cron schedule). Limits on one definition, checked when it
#: is applied: names go into URLs and into their jobs' names (flow/job, within MAX_NAME_LENGTH).
MAX_FLOW_NAME_LENGTH = 128
MAX_FLOW_JOB_NAME_LENGTH = 120
#: Jobs in one flow: room for a fan-out of 10,000 jobs between a first and a last one.
MAX_FLOW_JOBS = 20_000
MAX_FLOW_PARAMETERS = 256
MAX_FLOW_DESCRIPTION_LENGTH = 4096
#: Runs of one flow at once (`max_active_runs`): its default, and the most it may be set to.
DEFAULT_MAX_ACTIVE_RUNS = 1
MAX_FLOW_ACTIVE_RUNS = 1_000
#: A schedule's time zone unless it names one, and how far back it catches up after downtime.
DEFAULT_FLOW_TIMEZONE = "UTC"
DEFAULT_CATCH_UP_WINDOW = 24 * 3600.0
#: A due time seen at most this many seconds after it is on time (the server was busy or
#: restarting); an older one was missed, and the schedule's `catch_up` decides what becomes of it.
FLOW_SCHEDULE_GRACE = 60.0
#: Missed due times one catch-up (`catch_up: all`) starts or buffers at most: the latest ones.
MAX_CATCH_UP_RUNS = 1_000
#: Due times one backfill may create runs for; a wider range is refused (split it).
MAX_BACKFILL_RUNS = 10_000
#: Flows or runs one page of a listing holds unless the caller asks for another size.
DEFAULT_FLOW_PAGE = 100
#: Flows one bulk apply (POST /api/v1/flows) may hold; each is stored, or none.
MAX_BULK_FLOWS = 10_000
#: Runs one bulk start (POST /api/v1/flow-runs) may hold, and their jobs in all (a run of the
#: largest flow has MAX_FLOW_JOBS), so that one call cannot hold the server's memory; each run
#: is stored, or none.
MAX_BULK_RUNS = MAX_BULK_FLOWS
MAX_BULK_RUN_JOBS = 100_000
#: Parsed flow definitions the server keeps in memory, counted by their jobs, the least recently
#: used dropped first, so that their memory does not grow with the flows stored: a one-job flow
#: takes ~2.7 KiB, one of 10,000 jobs ~12 MiB; the largest flow fits. A dropped one is parsed
#: again from the store's copy when next needed: ~50 us for one job, ~200 ms for 10,000.
FLOW_DEFINITION_CACHE_JOBS = MAX_FLOW_JOBS
#: Jobs of a run the server builds and submits at a time, so that a fan-out of 10,000 leaves the
#: event loop to status calls between batches (its longest stall: ~70-90 ms, against 230-340 ms
#: when all were built and submitted at once).
FLOW_RELEASE_BATCH = 500
#: Runs `client.flows.follow` remembers having given, so that one told again after a
#: reconnect is not given twice (a flow has at most MAX_FLOW_ACTIVE_RUNS scheduled runs active).
FOLLOW_REMEMBERED_RUNS = 10_000
#: How often the server decides the due times of scheduled flows (a six-field cron may fire
#: each second).
FLOW_TICK_INTERVAL = 0.5
#: How long a blocking get, acquire, join or wait keeps trying to reach a server that went away
#: (a restart) before it raises ServerUnreachable; it waits again once it is back.
PRIMITIVE_RECONNECT_PATIENCE = 60.0
#: A call on a primitive over the client stream (protocol.Call): the longest op or error name,
#: and the most arguments one call takes.
MAX_OP_LENGTH = 32
MAX_CALL_ARGS = 8
