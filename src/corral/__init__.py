"""corral: a distributed job scheduler for Python."""

from __future__ import annotations

from corral.errors import (
    AuthError,
    ConfigError,
    CorralError,
    InvalidRequest,
    JobFailed,
    JobTimeout,
    NotFound,
    ProtocolError,
    SerializationError,
    ServerUnreachable,
)
from corral.models import JobInfo, JobKind, JobSpec, JobState, QueueOrdering

__version__ = "0.1.0"

__all__ = [
    # errors
    "AuthError",
    "ConfigError",
    "CorralError",
    "InvalidRequest",
    "JobFailed",
    "JobTimeout",
    "NotFound",
    "ProtocolError",
    "SerializationError",
    "ServerUnreachable",
    # models
    "JobInfo",
    "JobKind",
    "JobSpec",
    "JobState",
    "QueueOrdering",
]
