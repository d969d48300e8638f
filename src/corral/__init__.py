"""corral: a distributed job scheduler for Python."""

from __future__ import annotations

from corral.client import (
    AsyncClient,
    AsyncJob,
    AsyncResult,
    Client,
    Executor,
    Flow,
    FlowRun,
    Job,
    Pool,
    connect,
    python_job,
    shell_job,
    ssh_job,
)
from corral.errors import (
    AuthError,
    ConfigError,
    Conflict,
    CorralError,
    Forbidden,
    InvalidName,
    InvalidRequest,
    JobFailed,
    JobTimeout,
    NotFound,
    NotHeld,
    NoWorkerWarning,
    PoolTimeout,
    PrimitiveMismatch,
    ProtocolError,
    SerializationError,
    ServerUnreachable,
    StoreUnavailable,
)
from corral.models import JobInfo, JobKind, JobSpec, JobState, QueueOrdering

__version__ = "0.1.0"

__all__ = [
    # client
    "connect",
    "Client",
    "AsyncClient",
    "Job",
    "AsyncJob",
    "python_job",
    "shell_job",
    "ssh_job",
    # multiprocessing and concurrent.futures over the cluster
    "Pool",
    "AsyncResult",
    "Executor",
    # flows: DAGs of jobs on cron schedules (docs/flows.md)
    "Flow",
    "FlowRun",
    # errors
    "AuthError",
    "ConfigError",
    "Conflict",
    "Forbidden",
    "CorralError",
    "InvalidName",
    "InvalidRequest",
    "JobFailed",
    "JobTimeout",
    "NotFound",
    "PoolTimeout",
    "NotHeld",
    "PrimitiveMismatch",
    "ProtocolError",
    "SerializationError",
    "ServerUnreachable",
    "StoreUnavailable",
    # warnings
    "NoWorkerWarning",
    # models
    "JobInfo",
    "JobKind",
    "JobSpec",
    "JobState",
    "QueueOrdering",
]
