"""A real corral cluster for the benchmarks: `corral server` and `corral worker` subprocesses.

The benchmarks measure what a user gets from the installed commands, so nothing here runs
in-process: the server and each worker are their own Python processes, on loopback, with the
default SQLite store in a temporary data directory.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import corral

BENCH_DIR = Path(__file__).resolve().parent


def bench_env() -> dict[str, str]:
    """The environment for servers and workers: bench_tasks importable by the workers."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH_DIR), env.get("PYTHONPATH")]))
    return env


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.01)


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as `uptime` prints them."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def rss_mib(pid: int) -> float:
    """Resident memory of a process, in MiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class Server:
    """A `corral server` subprocess on a free port; restarts keep the port and data dir."""

    data_dir: Path
    args: tuple[str, ...] = ()
    port: int = 0
    url: str = ""
    proc: subprocess.Popen[str] | None = None
    started_at: float = 0.0  # time.monotonic() just before the process was spawned

    @property
    def token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> Server:
        """Spawn the server and return once it has bound its port (it may still be restoring)."""
        command = [sys.executable, "-m", "corral", "server", "--data-dir", str(self.data_dir)]
        command += ["--port", str(self.port), *self.args]
        log = open(self.data_dir / "server.log", "a")  # noqa: SIM115 - the child keeps it
        self.started_at = time.monotonic()
        with log:
            self.proc = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=log, text=True, env=bench_env()
            )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("READY "):
            self.proc.kill()
            log_text = (self.data_dir / "server.log").read_text()
            raise RuntimeError(f"server did not start: {line!r}\n{log_text}")
        self.url = line.split()[1]
        self.port = int(self.url.rsplit(":", 1)[1])
        return self

    def healthy(self) -> bool:
        """True once /healthz answers, which uvicorn does only after the queues are restored."""
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def kill(self) -> None:
        """kill -9: no shutdown code runs."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self._close_pipe()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close_pipe()

    def _close_pipe(self) -> None:
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    def connect(self) -> corral.Client:
        return corral.connect(self.url, self.token)


@dataclass
class Cluster:
    """A server and `workers` worker processes, each running `concurrency` jobs at once."""

    data_dir: Path
    workers: int = 2
    concurrency: int = 0  # 0: the worker's default (CPU count)
    worker_args: tuple[str, ...] = ()
    server: Server = field(init=False)
    worker_procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.server = Server(self.data_dir)

    def start(self) -> Cluster:
        self.server.start()
        wait_until(self.server.healthy, 60, "the server's /healthz")
        for _ in range(self.workers):
            self.start_worker()
        with self.server.connect() as client:
            wait_until(
                lambda: sum(w.connected for w in client.workers()) >= self.workers,
                60,
                f"{self.workers} workers to connect",
            )
        return self

    def start_worker(self) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "corral", "worker", "--server", self.server.url]
        command += ["--log-level", "warning", *self.worker_args]
        if self.concurrency:
            command += ["--concurrency", str(self.concurrency)]
        env = bench_env()
        env["CORRAL_TOKEN"] = self.server.token
        log = open(self.data_dir / f"worker{len(self.worker_procs)}.log", "w")  # noqa: SIM115
        with log:
            proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.worker_procs.append(proc)
        return proc

    @property
    def pids(self) -> list[int]:
        """Server first, then the workers."""
        return [self.server.pid] + [proc.pid for proc in self.worker_procs]

    def stop(self) -> None:
        for proc in self.worker_procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.worker_procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.server.stop()


@contextlib.contextmanager
def running_cluster(
    data_dir: Path, workers: int, concurrency: int = 0, worker_args: tuple[str, ...] = ()
) -> Iterator[Cluster]:
    cluster = Cluster(data_dir, workers, concurrency, worker_args)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    """A plain text table, columns padded to their widest cell."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}")
    for number, row in enumerate([header, *rows]):
        print(
            "  "
            + "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True))
        )
        if number == 0:
            print("  " + "  ".join("-" * width for width in widths))


def print_against(best: dict[str, float], base: str, unit: str) -> None:
    """Each system's best rate (in `unit`) and its ratio to that of the system `base`."""
    base_rate = best[base]
    width = max(map(len, best))
    print(f"\nbest {unit} against {base}'s {base_rate:,.0f}:")
    for system, rate in best.items():
        print(f"  {system:<{width}} {rate:>10,.0f}   {rate / base_rate:,.2f}x")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # fields from "state" on; the name may hold spaces


def tree_cpu_seconds(root: int, descendants: bool = True) -> float:
    """CPU time (user + system) of a process and (unless told not to) its living descendants.

    Pool children of a worker are its grandchildren (forked by the python executor's zygote),
    so this walks the whole tree rather than trusting the kernel's per-child totals.
    """
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is None:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    tree = {root}
    grew = descendants
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return sum(times.get(pid, 0.0) for pid in tree)


class CpuMeter:
    """CPU seconds each named process tree spent between start() and stop().

    `roots` maps a name to (pid, whether to count its descendants too).
    """

    def __init__(self, roots: dict[str, tuple[int, bool]]) -> None:
        self.roots = roots
        self._before: dict[str, float] = {}
        self.spent: dict[str, float] = {}

    def start(self) -> None:
        self._before = {name: tree_cpu_seconds(*root) for name, root in self.roots.items()}

    def stop(self) -> None:
        self.spent = {
            name: tree_cpu_seconds(*root) - self._before[name] for name, root in self.roots.items()
        }

    def describe(self) -> str:
        return ", ".join(f"{name} {seconds:.2f}s" for name, seconds in self.spent.items())


def installed(module: str) -> bool:
    """Whether an optional baseline (the `bench` extra) can be imported here."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a dotted name whose parent is missing
        return False


class Rounds:
    """Timed rounds of several systems: each one's rates, and a table row per round."""

    def __init__(self, seconds_format: str = ".2f") -> None:
        self.rates: dict[str, list[float]] = {}
        self.rows: list[list[str]] = []
        self._seconds_format = seconds_format

    def measure(self, system: str, run: Callable[[int], float], count: int) -> list[str]:
        """Run `run(count)` (it returns the seconds it took) and record it; the row, whose
        last cell (notes) the caller may fill in."""
        load = load_average()
        seconds = run(count)
        self.rates.setdefault(system, []).append(count / seconds)
        row = [system, str(count), format(seconds, self._seconds_format)]
        row += [f"{count / seconds:,.0f}", load, ""]
        self.rows.append(row)
        return row

    def best(self) -> dict[str, float]:
        return {system: max(values) for system, values in self.rates.items()}
