"""The Python client."""

from corral.client.client import AsyncClient, AsyncJob, Client, Job, connect
from corral.client.flows import Flow, FlowRun
from corral.client.jobs import python_job, shell_job, ssh_job
from corral.client.pool import AsyncResult, Executor, Pool

__all__ = [
    "AsyncClient",
    "AsyncJob",
    "AsyncResult",
    "Client",
    "Executor",
    "Flow",
    "FlowRun",
    "Job",
    "Pool",
    "connect",
    "python_job",
    "shell_job",
    "ssh_job",
]
