"""The Python client."""

from corral.client.client import AsyncClient, AsyncJob, Client, Job, connect
from corral.client.jobs import python_job, shell_job, ssh_job

__all__ = [
    "AsyncClient",
    "AsyncJob",
    "Client",
    "Job",
    "connect",
    "python_job",
    "shell_job",
    "ssh_job",
]
