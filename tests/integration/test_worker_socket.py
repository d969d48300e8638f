"""The worker socket trusts nothing it can check, against real servers and workers.

Hostile peers are raw WebSocket clients speaking msgpack frames; honest ones are real worker
processes. Covered: malformed frames close the socket with 4400 and break nothing, announced
capacity is bounded, a worker id in use cannot be taken without its session secret (across a
restart too), results and logs count only for the attempt a worker holds, and frames too big for
one message are split on both sides.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest
import websockets
from integration_support import ServerProcess, WorkerProcess, run_corral, wait_for
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from corral import protocol as p
from corral.constants import MAX_FRAME_BYTES, PROTOCOL_VERSION

WAIT = 60.0
WORKERS_WS = "/api/v1/workers/ws"
CLIENTS_WS = "/api/v1/ws"


@pytest.fixture
def api(server: ServerProcess) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {server.token}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=WAIT, trust_env=False) as http:
        yield http


def raw_hello(worker_id: str = "raw", secret: str | None = None, **fields: Any) -> bytes:
    """A hello as a worker sends it, with any field replaced (left out: `secret`)."""
    values: dict[str, Any] = {
        "protocol": PROTOCOL_VERSION,
        "worker_id": worker_id,
        "host": "raw",
        "pid": 1,
        "concurrency": 1,
        "capacity": 1,
        "queues": ["default"],
        "tags": [],
        "held": [],
    }
    values.update(fields)
    frame = ["hello", *values.values(), *([] if secret is None else [secret])]
    return msgpack.packb(frame, use_bin_type=True)


def raw(*frame: Any) -> bytes:
    return msgpack.packb(list(frame), use_bin_type=True)


def report(job_id: str, attempt: int, state: str, **details: Any) -> list[Any]:
    """A result report as it goes on the wire."""
    return list(p.ResultReport(job_id, attempt, state, **details))  # type: ignore[arg-type]


async def connect(server: ServerProcess, path: str = WORKERS_WS) -> ClientConnection:
    return await websockets.connect(
        server.url.replace("http://", "ws://") + path,
        additional_headers={"Authorization": f"Bearer {server.token}"},
        proxy=None,
        max_size=None,
    )


async def frames_until(ws: ClientConnection, wanted: Callable[[p.Frame], bool]) -> p.Frame:
    """Read frames (as a worker decodes them) until one is `wanted`."""
    async with asyncio.timeout(WAIT):
        while True:
            for frame in p.decode_all(await ws.recv(), p.TO_WORKER):
                if wanted(frame):
                    return frame


async def close_of(ws: ClientConnection) -> tuple[int | None, str]:
    """Wait for the server to close the socket; its code and reason."""
    with contextlib.suppress(ConnectionClosed):
        async with asyncio.timeout(WAIT):
            while True:
                await ws.recv()
    return ws.close_code, ws.close_reason


async def join(server: ServerProcess, worker_id: str, capacity: int = 1) -> ClientConnection:
    """A raw worker that the server welcomed."""
    ws = await connect(server)
    await ws.send(raw_hello(worker_id, capacity=capacity))
    welcome = await frames_until(ws, lambda frame: True)
    if not isinstance(welcome, p.Welcome):
        await ws.close()
        raise AssertionError(f"not welcomed: {welcome}")
    return ws


def server_log_has_no_traceback(server: ServerProcess) -> None:
    log = server.log.read_text()
    assert "Traceback" not in log, log[-3000:]


# -- malformed frames -------------------------------------------------------------------------


HOSTILE_HELLOS = [
    ({"queues": [1, 2]}, "hello.queues[0]"),
    ({"worker_id": 12345}, "hello.worker_id"),
    ({"pid": "notapid"}, "hello.pid"),
    ({"capacity": 10**9}, "hello.capacity"),
    ({"concurrency": 1e9}, "hello.concurrency"),
    ({"tags": ["t"] * 10_000}, "hello.tags"),
    ({"held": [["job", "first"]]}, "hello.held[0].attempt"),
]


def test_malformed_frames_close_the_socket_with_4400_and_break_nothing(
    server: ServerProcess, api: httpx.Client
) -> None:
    async def scenario() -> None:
        for fields, named in HOSTILE_HELLOS:
            ws = await connect(server)
            await ws.send(raw_hello(**fields))
            code, reason = await close_of(ws)
            assert (code, named in reason) == (4400, True), (fields, code, reason)
        bad_frames = [
            (raw("results", [report("j", 1, "queued")]), "results.items[0].state"),
            (raw("log", [["j", 1, "weird/../stream", b"x"]]), "log.items[0].stream"),
            (raw("results", [{"job_id": "j", "attempt": 1}]), "results.items[0]"),
            (raw("jobs", []), "unexpected 'jobs' frame"),
            (b"\xc1 not msgpack", "undecodable"),
        ]
        for index, (data, named) in enumerate(bad_frames):
            ws = await join(server, f"w-bad-{index}")
            await ws.send(data)
            code, reason = await close_of(ws)
            assert (code, named in reason) == (4400, True), (data[:40], code, reason)
        ws = await join(server, "w-text")
        await ws.send("a text message")
        assert (await close_of(ws))[0] == 4400

        # On the client stream a malformed submit body is answered, and the stream goes on.
        client = await connect(server, CLIENTS_WS)
        await client.send(raw("submit", 9, [1, "x"]))
        answer = p.decode(await client.recv(), p.TO_CLIENT)
        assert isinstance(answer, p.Error)
        assert (answer.request_id, answer.status) == (9, 422)
        assert "submit.specs[0]: expected a map" in answer.message
        await client.send(p.Watch(["no-such-job"]).encode())
        done = p.decode(await client.recv(), p.TO_CLIENT)
        assert isinstance(done, p.Done) and done.state == "unknown"
        await client.send(raw("watch", [7]))
        code, reason = await close_of(client)
        assert (code, "watch.job_ids[0]" in reason) == (4400, True)

    asyncio.run(scenario())
    for path in ("/api/v1/queues", "/api/v1/workers", "/metrics", "/api/v1/jobs"):
        assert api.get(path).status_code == 200, path
    assert [queue["name"] for queue in api.get("/api/v1/queues").json()] == ["default"]
    server_log_has_no_traceback(server)


def test_a_worker_cannot_announce_more_capacity_than_the_limit(
    server: ServerProcess, api: httpx.Client, tmp_path: Path
) -> None:
    jobs = [{"kind": "shell", "command": "true"} for _ in range(50)]
    assert api.post("/api/v1/jobs/batch", json={"jobs": jobs}).status_code == 201

    async def greedy() -> tuple[int | None, str]:
        ws = await connect(server)
        await ws.send(raw_hello("greedy", capacity=10**9, concurrency=10**6))
        return await close_of(ws)

    code, reason = asyncio.run(greedy())
    assert code == 4400 and "hello.concurrency" in reason
    queued = api.get("/api/v1/jobs", params={"state": "queued", "limit": 100}).json()
    assert len(queued) == 50
    result = run_corral(
        "worker", "--server", server.url, "--token", server.token, "--prefetch", "100000",
        env={"CORRAL_DATA_DIR": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode != 0
    assert "--prefetch" in result.stderr and "hello.capacity" in result.stderr
    assert "Traceback" not in result.stderr


# -- identity ---------------------------------------------------------------------------------


def test_a_worker_id_in_use_cannot_be_taken_without_its_secret_even_after_a_restart(
    start_server: Callable[..., ServerProcess],
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    server = start_server("--lease", "5")
    start_worker(server, "--concurrency", "1")
    gate = tmp_path / "gate"
    with server.connect() as client:
        job = client.submit(
            "corral_test_tasks:big_result_when", str(gate), 10, env={"API_KEY": "hunter2"}
        )
        wait_for(lambda: job.info().state == "running", WAIT, "the job to run")
        [worker] = client.workers()
    worker_id = worker.id

    async def impostor(secret: str | None) -> tuple[p.Frame, int | None, str]:
        ws = await connect(server)
        await ws.send(raw_hello(worker_id, secret, held=[[job.id, 1]], capacity=5))
        answer = p.decode_all(await ws.recv(), p.TO_WORKER)[0]
        return answer, *await close_of(ws)

    def refused(secret: str | None) -> None:
        answer, code, reason = asyncio.run(impostor(secret))
        assert isinstance(answer, p.Refuse), answer
        assert "in use by another worker" in answer.reason
        assert code == 4409 and "in use" in reason

    refused(None)
    refused("0" * 32 + "." + "0" * 64)
    with server.connect() as client:
        [worker] = client.workers()
        assert (worker.id, worker.connected, worker.running) == (worker_id, True, 1)
        assert client.get(job.id).state == "running"

    key = server.data_dir / "worker.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    server.kill()
    server.restart()  # the job is restored as running on that worker id
    refused(None)
    gate.touch()
    with server.connect() as client:
        assert client.job(job.id).result(timeout=WAIT) == "x" * 10
        info = client.get(job.id)
        assert [(a.worker, a.state) for a in info.attempts] == [(worker_id, "succeeded")]
    server_log_has_no_traceback(server)


# -- results and logs -------------------------------------------------------------------------


def test_results_and_logs_count_only_for_the_attempt_the_worker_holds(
    server: ServerProcess, api: httpx.Client
) -> None:
    def submit() -> str:
        response = api.post("/api/v1/jobs", json={"kind": "shell", "command": "true"})
        job_id: str = response.json()["ids"][0]
        return job_id

    async def acked(ws: ClientConnection, items: list[list[Any]]) -> None:
        await ws.send(raw("results", items))
        ack = await frames_until(ws, lambda frame: isinstance(frame, p.Ack))
        assert isinstance(ack, p.Ack)
        assert [list(item) for item in ack.items] == [item[:2] for item in items]

    async def scenario() -> tuple[str, str]:
        holder = await join(server, "holder")
        other = await join(server, "other", capacity=0)
        done = submit()
        jobs = await frames_until(holder, lambda frame: isinstance(frame, p.Jobs))
        assert isinstance(jobs, p.Jobs) and jobs.items[0].job_id == done
        await holder.send(raw("log", [[done, 1, "stdout", b"real output\n"]]))
        await acked(holder, [report(done, 1, "succeeded", exit_code=0)])

        running = submit()
        await frames_until(holder, lambda frame: isinstance(frame, p.Jobs))
        forged = [
            report(done, 1, "failed", error_message="forged"),
            report(running, 1, "failed", error_message="forged"),
            report(running, 2, "succeeded"),
            report("made-up", 1, "succeeded"),
        ]
        logs = [[done, 1, "stdout", b"forged\n"], [running, 1, "stdout", b"forged\n"]]
        logs += [[f"made-up-{n}", 1, "stdout", b"x" * 1000] for n in range(2001)]
        await other.send(raw("log", logs))
        await acked(other, forged)
        # The holder's own result for an attempt it no longer holds changes nothing either.
        await holder.send(raw("log", [[done, 1, "stderr", b"late\n"]]))
        await acked(holder, [report(done, 1, "failed", error_message="again")])
        await holder.send(raw("log", [[running, 2, "stdout", b"other attempt\n"]]))
        await acked(holder, [report(running, 1, "succeeded", exit_code=0)])
        await holder.close()
        await other.close()
        return done, running

    done, running = asyncio.run(scenario())
    for job_id in (done, running):
        job = api.get(f"/api/v1/jobs/{job_id}").json()
        assert job["state"] == "succeeded" and job["error_message"] is None, job
        assert [(a["worker"], a["state"]) for a in job["attempts"]] == [("holder", "succeeded")]
    stdout = api.get(f"/api/v1/jobs/{done}/logs", params={"stream": "stdout"})
    assert stdout.content == b"real output\n"
    assert api.get(f"/api/v1/jobs/{done}/logs", params={"stream": "stderr"}).content == b""
    assert api.get(f"/api/v1/jobs/{running}/logs", params={"stream": "stdout"}).content == b""
    assert api.get("/api/v1/jobs/made-up-7/logs").status_code == 404
    server_log_has_no_traceback(server)


# -- frames that would not fit one message ----------------------------------------------------


RESULT_BYTES = 3_900_000


def test_results_waiting_for_a_restarted_server_are_sent_in_messages_that_fit(
    start_server: Callable[..., ServerProcess],
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    server = start_server("--lease", "10")
    start_worker(server, "--concurrency", "6")
    gate = tmp_path / "gate"
    done = Path(f"{gate}.done")
    with server.connect() as client:
        jobs = [
            client.submit("corral_test_tasks:big_result_when", str(gate), RESULT_BYTES)
            for _ in range(6)
        ]
        wait_for(lambda: all(j.info().state == "running" for j in jobs), WAIT, "six running")
    assert server.proc is not None
    server.proc.send_signal(signal.SIGSTOP)  # the results pile up unacknowledged...
    try:
        gate.touch()
        wait_for(lambda: done.exists() and len(done.read_text().split()) == 6, WAIT, "six done")
    finally:
        server.kill()  # ...then the server dies; its successor gets all six (23 MB) again
    server.restart()
    with server.connect() as client:
        for job in jobs:
            assert len(client.job(job.id).result(timeout=WAIT)) == RESULT_BYTES
    assert 6 * RESULT_BYTES > MAX_FRAME_BYTES


def test_jobs_bigger_together_than_a_message_reach_their_worker(
    server: ServerProcess, start_worker: Callable[..., WorkerProcess]
) -> None:
    argument = "y" * 3_500_000
    with server.connect() as client:
        jobs = [client.submit("corral_test_tasks:length", argument) for _ in range(6)]
        start_worker(server, "--concurrency", "2")  # capacity 66: all six go at once
        assert [job.result(timeout=WAIT) for job in jobs] == [len(argument)] * 6
        for job in jobs:
            assert [a.state for a in job.info().attempts] == ["succeeded"]
    assert 6 * len(argument) > MAX_FRAME_BYTES


async def hold_until(squatter: ClientConnection, condition: Callable[[], bool]) -> None:
    """Keep a raw worker's id, heartbeating (the server's lease is 2 s, and a loaded machine
    can take longer than that to start a worker), until `condition()` holds."""
    async with asyncio.timeout(WAIT):
        while not condition():
            await squatter.send(p.Heartbeat().encode())
            await asyncio.sleep(0.2)


WORKER_AS = """
import asyncio, logging, sys
from corral.worker.agent import Worker, WorkerSettings
logging.basicConfig(level=logging.INFO, stream=sys.stdout)
settings = WorkerSettings(server_url=sys.argv[1], token=sys.argv[2], worker_id=sys.argv[3],
                          concurrency=1)
asyncio.run(Worker(settings).run())
"""


def test_a_worker_refused_for_an_id_in_use_waits_until_the_id_is_free(
    server: ServerProcess, api: httpx.Client, tmp_path: Path
) -> None:
    log = tmp_path / "twin.log"
    worker: subprocess.Popen[bytes] | None = None
    try:
        loop = asyncio.new_event_loop()
        try:
            squatter = loop.run_until_complete(join(server, "twin", capacity=0))
            with open(log, "w") as out:  # the worker asks once the id is held: no race
                worker = subprocess.Popen(
                    [sys.executable, "-c", WORKER_AS, server.url, server.token, "twin"],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )

            def refused() -> bool:
                return "in use by another worker" in log.read_text()

            loop.run_until_complete(hold_until(squatter, refused))
            loop.run_until_complete(squatter.close())
        finally:
            loop.close()
        assert worker.poll() is None, log.read_text()
        response = api.post("/api/v1/jobs", json={"kind": "shell", "command": "true"})
        job_id = response.json()["ids"][0]
        # The squatter's lease runs out (2 s), then the waiting worker gets the id and the job.
        wait_for(
            lambda: api.get(f"/api/v1/jobs/{job_id}").json()["state"] == "succeeded",
            WAIT,
            "the refused worker to get in and run the job",
        )
        assert api.get(f"/api/v1/jobs/{job_id}").json()["worker"] == "twin"
    finally:
        if worker is not None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=15)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
