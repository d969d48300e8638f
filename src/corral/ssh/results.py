"""What a run produced: per-host results as plain data, and the run directory an operator greps.

A run directory holds, for every host, `<host>.out` and `<host>.err`; then `summary.tsv` (host,
status, exit code, seconds, first line of the error), `summary.jsonl` (the same plus step details),
`failed.txt` (failed and unreachable hosts, ready for `--hosts @failed.txt`) and, for `facts` and
`check` steps, `groups-<name>.json` (hosts grouped by output).

A `HostResult` also carries the host's output for `--inline` and `--json`, cut at
MAX_RESULT_OUTPUT characters a stream so that a chatty fleet cannot fill the client's memory;
the host's files keep all of it.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from corral.errors import ConfigError

#: Characters of each stream a HostResult keeps (the host's .out and .err files keep all).
MAX_RESULT_OUTPUT = 64 * 1024
_CUT_NOTE = f"\n[output cut at {MAX_RESULT_OUTPUT} characters; all of it is in the run directory]\n"


def append_bounded(text: str, more: str) -> str:
    """`text` + `more`, cut at MAX_RESULT_OUTPUT characters with a note saying where the rest is."""
    if text.endswith(_CUT_NOTE):
        return text
    combined = text + more
    if len(combined) <= MAX_RESULT_OUTPUT:
        return combined
    return combined[:MAX_RESULT_OUTPUT] + _CUT_NOTE


class HostStatus(StrEnum):
    """How a host ended: the values of the `status` column of summary.tsv."""

    OK = "ok"
    FAILED = "failed"
    UNREACHABLE = "unreachable"
    SKIPPED = "skipped"


@dataclass
class StepResult:
    """One playbook step on one host. `outcome` is ran, skipped, failed, ignored or would-run."""

    index: int
    name: str
    outcome: str
    exit_code: int | None = None
    reason: str = ""


@dataclass
class HostResult:
    """The end state of one host; plain data, `to_dict()` gives JSON-ready values.

    `stdout` and `stderr` are bounded (see append_bounded) and left out of `to_dict()` unless
    asked for: the summary files and an ssh job's result stay small however much hosts print.
    """

    host: str
    status: HostStatus
    exit_code: int | None = None
    duration: float = 0.0
    error: str = ""
    steps: list[StepResult] = field(default_factory=list)
    stdout: str = ""
    stderr: str = ""

    def first_error_line(self) -> str:
        return next((line.strip() for line in self.error.splitlines() if line.strip()), "")

    def to_dict(self, *, output: bool = False) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status.value
        data["duration"] = round(self.duration, 3)
        if not output:
            del data["stdout"], data["stderr"]
        return data


@dataclass
class OutputGroup:
    """Hosts whose command printed the same output (for facts and `check` steps)."""

    output: str
    hosts: list[str]

    @property
    def count(self) -> int:
        return len(self.hosts)


@dataclass
class HandshakeStats:
    """How connection set-up went: it dominates short commands, so runs report it."""

    count: int = 0
    total_seconds: float = 0.0
    peak_concurrent: int = 0

    @property
    def mean_seconds(self) -> float:
        return self.total_seconds / self.count if self.count else 0.0


@dataclass
class RunSummary:
    """Everything a run returns to its caller; `to_dict()` is JSON-serialisable."""

    out_dir: str
    results: list[HostResult]
    duration: float
    interrupted: bool = False
    stopped: str = ""
    hosts_differ: bool = False
    groups: dict[str, list[OutputGroup]] = field(default_factory=dict)
    handshakes: HandshakeStats = field(default_factory=HandshakeStats)

    def counts(self) -> dict[HostStatus, int]:
        found = Counter(result.status for result in self.results)
        return {status: found.get(status, 0) for status in HostStatus}

    @property
    def any_failed(self) -> bool:
        return any(r.status in (HostStatus.FAILED, HostStatus.UNREACHABLE) for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": self.out_dir,
            "duration": round(self.duration, 3),
            "interrupted": self.interrupted,
            "stopped": self.stopped,
            "hosts_differ": self.hosts_differ,
            "counts": {status.value: n for status, n in self.counts().items()},
            "results": [result.to_dict() for result in self.results],
            "groups": {
                name: [{"output": g.output, "hosts": g.hosts} for g in groups]
                for name, groups in self.groups.items()
            },
            "handshakes": {
                **asdict(self.handshakes),
                "mean_seconds": round(self.handshakes.mean_seconds, 4),
            },
        }


def group_outputs(outputs: dict[str, str]) -> list[OutputGroup]:
    """Group hosts by identical output (trailing whitespace ignored), largest group first."""
    by_output: dict[str, list[str]] = {}
    for host, output in outputs.items():
        by_output.setdefault(output.rstrip(), []).append(host)
    groups = [OutputGroup(output, hosts) for output, hosts in by_output.items()]
    return sorted(groups, key=lambda group: -group.count)


_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9@:.,+=_%\[\]-]")


def host_file_stem(host: str) -> str:
    """A file name for a host: its name with characters unsafe in paths replaced by `_`."""
    stem = _UNSAFE_NAME_CHARS.sub("_", host)
    return "_" + stem if stem.startswith(".") or not stem else stem


def default_run_dir(kind: str) -> Path:
    """`runs/ssh-<kind>-<timestamp>` in the working directory, suffixed if it already exists."""
    base = Path("runs") / f"ssh-{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    candidate, number = base, 1
    while candidate.exists():
        number += 1
        candidate = base.with_name(f"{base.name}-{number}")
    return candidate


class RunDirectory:
    """Writes a run's files. Host output is appended as hosts finish, so an interrupted run keeps
    what it had; the summary files are written once at the end (also after an interruption)."""

    def __init__(self, path: Path) -> None:
        if path.exists() and not path.is_dir():
            raise ConfigError(f"--out {path} is a file; give a directory")
        path.mkdir(parents=True, exist_ok=True)
        self.path = path

    def host_path(self, host: str, stream: str) -> Path:
        return self.path / f"{host_file_stem(host)}.{stream}"

    def append_output(self, host: str, stdout: str, stderr: str) -> None:
        for stream, text in (("out", stdout), ("err", stderr)):
            with self.host_path(host, stream).open("a", encoding="utf-8") as file:
                file.write(text)

    def write_groups(self, name: str, groups: list[OutputGroup]) -> None:
        data = [{"count": g.count, "output": g.output, "hosts": g.hosts} for g in groups]
        (self.path / f"groups-{name}.json").write_text(json.dumps(data, indent=1) + "\n")

    def write_summary(self, summary: RunSummary) -> None:
        rows = ["host\tstatus\texit_code\tduration\terror"]
        for result in summary.results:
            code = "" if result.exit_code is None else str(result.exit_code)
            error = result.first_error_line().replace("\t", " ")
            fields = [result.host, result.status.value, code, f"{result.duration:.3f}", error]
            rows.append("\t".join(fields))
        (self.path / "summary.tsv").write_text("\n".join(rows) + "\n")
        with (self.path / "summary.jsonl").open("w", encoding="utf-8") as file:
            for result in summary.results:
                file.write(json.dumps(result.to_dict()) + "\n")
        failed = [
            r.host
            for r in summary.results
            if r.status in (HostStatus.FAILED, HostStatus.UNREACHABLE)
        ]
        (self.path / "failed.txt").write_text("".join(f"{host}\n" for host in failed))
