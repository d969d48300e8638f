"""Execution strategies a worker runs jobs with, behind one interface (`Executor`)."""

from __future__ import annotations

from corral.worker.executors.base import Executor, JobSetupError, Outcome, OutputCallback
from corral.worker.executors.python import PythonExecutor
from corral.worker.executors.shell import ShellExecutor

__all__ = [
    # interface
    "Executor",
    "JobSetupError",
    "Outcome",
    "OutputCallback",
    # strategies
    "PythonExecutor",
    "ShellExecutor",
]
