"""The HTTP and WebSocket surface of the server: REST under /api/v1, worker and client streams.

Routes stay thin: they check the token's role, validate input (pydantic, so the OpenAPI document is
real) and call the engine. Every CorralError maps to a 4xx with a message that says what to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, Field, TypeAdapter, ValidationError, field_validator
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from corral import protocol as p
from corral.constants import (
    MAX_BATCH_JOBS,
    MAX_LIST_LIMIT,
    MAX_REQUEST_BYTES,
    PROTOCOL_VERSION,
)
from corral.errors import (
    AuthError,
    CorralError,
    FlowInvalid,
    Forbidden,
    InvalidRequest,
    NotFound,
    ProtocolError,
    http_status,
)
from corral.models import (
    JobInfo,
    JobSpec,
    JobState,
    PrimitiveInfo,
    QueueInfo,
    QueueOrdering,
    QueueSpec,
    WorkerInfo,
    describe_validation_error,
)
from corral.server.api_flows import flow_routes
from corral.server.auth import Role, TokenStore, allows, env_shown_to
from corral.server.engine import Engine, WorkerPeer
from corral.server.flows.service import FlowService
from corral.server.metrics import metrics_text
from corral.server.primitives.service import PrimitiveService
from corral.server.retention import keep_finished, purge_finished
from corral.server.sockets import SocketsByToken
from corral.server.store.base import JobFilter
from corral.server.subscriptions import Peer
from corral.transport import (
    CLOSE_BAD_FRAME,
    CLOSE_FORBIDDEN,
    CLOSE_ID_IN_USE,
    CLOSE_UNAUTHORIZED,
)

logger = logging.getLogger("corral.server")

_SPECS = TypeAdapter(list[JobSpec])
_TOKEN_HINT = (
    "pass a token with --token or CORRAL_TOKEN; the server printed its admin token on first start "
    "and keeps it in <data-dir>/admin.token; make more with `corral token create`"
)


class SubmitBatch(BaseModel):
    jobs: list[JobSpec] = Field(max_length=MAX_BATCH_JOBS)


class Retried(BaseModel):
    id: str
    status: str = "queued"
    warnings: list[str] = Field(
        default_factory=list,
        description="Why no connected worker could take the job, if none could; it waits.",
    )


class Submitted(BaseModel):
    ids: list[str]
    warnings: list[str] = Field(
        default_factory=list,
        description="Why no connected worker could take some of the jobs, one line per reason; "
        "they are stored and wait until a worker that can take them connects.",
    )


class PurgeRequest(BaseModel):
    finished_before: float = Field(
        allow_inf_nan=False, description="Unix time: jobs that finished earlier are deleted"
    )
    states: list[JobState] | None = Field(
        None, description="Only jobs in these finished states; all finished states if absent"
    )

    @field_validator("states")
    @classmethod
    def _finished_only(cls, states: list[JobState] | None) -> list[JobState] | None:
        for state in states or ():
            if not state.finished:
                finished = ", ".join(s.value for s in JobState if s.finished)
                raise ValueError(f"{state} is not a finished state; give one of {finished}")
        return states


class Purged(BaseModel):
    deleted: int


class TokenRequest(BaseModel):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[\w.\-]+$")
    role: Role
    replace: bool = Field(
        default=False, description="Replace a token of that name; the old one stops working"
    )


class TokenCreated(BaseModel):
    name: str
    role: Role
    token: str


class TokenName(BaseModel):
    name: str
    role: Role


class BodyLimit:
    """Refuse request bodies larger than the limit with 413, before reading them whole."""

    def __init__(self, app: ASGIApp, limit: int = MAX_REQUEST_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _too_large(self.limit)(scope, receive, send)
            return
        seen = 0
        refused = False

        # A body without Content-Length is counted as it streams in. FastAPI turns any error
        # raised while it reads the body into a 400, so answer 413 from here, tell the app the
        # client left, and drop whatever the app answers after that.
        async def limited_receive() -> Any:
            nonlocal seen, refused
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                if not refused:
                    refused = True
                    await _too_large(self.limit)(scope, receive, send)
                return {"type": "http.disconnect"}
            return message

        async def unless_refused(message: Any) -> None:
            if not refused:
                await send(message)

        try:
            await self.app(scope, limited_receive, unless_refused)
        except Exception:
            if not refused:
                raise


def _too_large(limit: int) -> JSONResponse:
    message = f"request body larger than {limit} bytes; send fewer jobs per batch"
    return JSONResponse({"detail": message}, status_code=413)


def _renderable(value: Any) -> Any:
    """`value` with what JSON cannot carry (NaN, infinities, lone surrogates: often the very
    input a validation error refuses) replaced by its repr, so that the 422 itself can be sent."""
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            return ascii(value)[1:-1]
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {_renderable(key): _renderable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_renderable(item) for item in value]
    return value


def _shown_to(role: Role, info: JobInfo) -> JobInfo:
    """The job as a token of `role` may see it (see env_shown_to)."""
    spec = info.spec
    if spec is None or (env := env_shown_to(role, spec.env)) is spec.env:
        return info
    return info.model_copy(update={"spec": spec.model_copy(update={"env": env})})


def _bearer(value: str | None) -> str | None:
    if value and value.lower().startswith("bearer "):
        return value[7:].strip()
    return None


def create_app(
    engine: Engine,
    tokens: TokenStore,
    keep: float | None = None,
    primitives: PrimitiveService | None = None,
) -> FastAPI:
    """The ASGI application for one engine, which it starts and stops, with the named
    primitives beside it (made on the engine's store and writer unless given); finished jobs
    older than `keep` seconds are deleted in the background (None keeps them all)."""
    service = primitives or PrimitiveService(engine.store, engine.writer, engine.clock)
    flows = FlowService(engine)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await engine.start()
        await service.start()
        await flows.start()
        retention = None if keep is None else asyncio.create_task(keep_finished(engine, keep))
        try:
            yield
        finally:
            if retention is not None:
                retention.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await retention
            await flows.stop()
            await service.stop()
            await engine.stop()

    app = FastAPI(
        title="corral",
        version="1",
        description="Durable distributed job scheduling. Every route needs a bearer token.",
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimit)
    open_sockets = SocketsByToken()

    @app.exception_handler(CorralError)
    async def corral_error(request: Request, exc: CorralError) -> JSONResponse:
        body: dict[str, Any] = {"detail": str(exc)}
        if isinstance(exc, FlowInvalid):
            body.update(problems=exc.problems, flow=exc.flow)
        return JSONResponse(_renderable(body), status_code=http_status(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # As FastAPI's own answer, but one that NaN or a lone surrogate in the input cannot
        # turn into a 500.
        detail = _renderable(jsonable_encoder(exc.errors()))
        return JSONResponse({"detail": detail}, status_code=422)

    def require(role: Role) -> Callable[[Request], Awaitable[Role]]:
        async def check(request: Request) -> Role:
            found = tokens.role_of(_bearer(request.headers.get("authorization")))
            if found is None:
                raise AuthError(f"missing or unknown token: {_TOKEN_HINT}")
            if not allows(found, role):
                raise Forbidden(f"a {found} token cannot do this; it needs a {role} or admin token")
            return found

        return check

    read = Depends(require(Role.READ))
    submit = Depends(require(Role.SUBMIT))
    admin = Depends(require(Role.ADMIN))
    app.include_router(flow_routes(flows, read, submit))

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        # Unauthenticated on purpose, for load balancers and probes; it reveals nothing but
        # whether the server can store (a StoreUnavailable is a 503 saying why).
        engine.writer.check_available()
        return {"status": "ok"}

    @app.get("/metrics", dependencies=[read], response_class=PlainTextResponse)
    async def metrics() -> Response:
        body, content_type = metrics_text(engine)
        return Response(body, media_type=content_type)

    @app.post("/api/v1/jobs", dependencies=[submit], status_code=201)
    async def submit_job(spec: JobSpec) -> Submitted:
        """Submit one job; answers once it is durably queued."""
        ids = await engine.submit([spec])
        return Submitted(ids=ids, warnings=engine.unserved_warnings([spec]))

    @app.post("/api/v1/jobs/batch", dependencies=[submit], status_code=201)
    async def submit_batch(batch: SubmitBatch) -> Submitted:
        """Submit many jobs in one transaction: all are queued, or none."""
        ids = await engine.submit(batch.jobs)
        return Submitted(ids=ids, warnings=engine.unserved_warnings(batch.jobs))

    @app.get("/api/v1/jobs")
    def list_jobs(
        state: Annotated[list[JobState] | None, Query()] = None,
        queue: str | None = None,
        name: str | None = None,
        before: str | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = 100,
        role: Role = read,
    ) -> list[JobInfo]:
        """Jobs newest first; page with `before=<last id seen>`."""
        job_filter = JobFilter(states=state, queue=queue, name=name, before=before, limit=limit)
        return [_shown_to(role, info) for info in engine.list_jobs(job_filter)]

    @app.get("/api/v1/jobs/{job_id}")
    async def get_job(job_id: str, role: Role = read) -> JobInfo:
        info = await run_in_threadpool(engine.get_job, job_id)  # the store, off the event loop
        if info.state is JobState.QUEUED:
            # The scheduler is the event loop's: asked here, not in the thread.
            info.waiting_reason = engine.scheduler.waiting_reason(job_id, engine.clock())
        return _shown_to(role, info)

    @app.post("/api/v1/jobs/{job_id}/cancel", dependencies=[submit])
    async def cancel_job(job_id: str) -> dict[str, str]:
        await engine.cancel(job_id)
        return {"id": job_id, "status": "cancel requested"}

    @app.post("/api/v1/jobs/{job_id}/retry", dependencies=[submit])
    async def retry_job(job_id: str) -> Retried:
        return Retried(id=job_id, warnings=await engine.retry(job_id))

    @app.delete("/api/v1/jobs/{job_id}", dependencies=[submit])
    async def delete_job(job_id: str) -> dict[str, str]:
        """Delete a finished job with its attempts and output; 409 while it is queued or running."""
        await engine.delete(job_id)
        return {"id": job_id, "status": "deleted"}

    @app.post("/api/v1/jobs/purge", dependencies=[admin])
    async def purge_jobs(request: PurgeRequest) -> Purged:
        """Delete the jobs that finished before a time, in batches; answers once all are gone."""
        return Purged(deleted=await purge_finished(engine, request.finished_before, request.states))

    @app.get("/api/v1/jobs/{job_id}/logs", dependencies=[read], response_class=PlainTextResponse)
    def job_logs(
        job_id: str,
        stream: Annotated[str, Query(pattern="^(stdout|stderr)$")] = "stdout",
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> Response:
        cut = engine.get_job(job_id).output_cut(stream)  # 404 for an unknown job
        chunk = engine.store.read_log(job_id, stream, offset)
        headers = {
            "X-Corral-Truncated": "1" if cut or chunk.truncated else "0",
            "X-Corral-Cut-Bytes": str(cut),
        }
        return Response(chunk.data, media_type="text/plain; charset=utf-8", headers=headers)

    # The scheduler's state is the event loop's: read on it (async def), never in a thread.
    @app.get("/api/v1/workers", dependencies=[read])
    async def list_workers() -> list[WorkerInfo]:
        return engine.list_workers()

    @app.get("/api/v1/queues", dependencies=[read])
    async def list_queues() -> list[QueueInfo]:
        depth, running = engine.scheduler.depth(), engine.scheduler.running()
        orderings = engine.scheduler.queue_orderings()
        return [
            QueueInfo(
                name=name,
                ordering=ordering,
                depth=depth.get(name, 0),
                running=running.get(name, 0),
            )
            for name, ordering in sorted(orderings.items())
        ]

    @app.get("/api/v1/primitives", dependencies=[read])
    async def list_primitives() -> list[PrimitiveInfo]:
        """The named queues, locks and shared values (docs/multiprocessing.md), by name."""
        # async: the primitives belong to the event loop, not to a thread of the pool
        return service.summary()

    @app.put("/api/v1/queues/{name}", dependencies=[admin])
    async def declare_queue(name: str, spec: QueueSpec) -> QueueInfo:
        """Create a queue or change its ordering (fifo, lifo or priority)."""
        try:
            JobSpec(kind="shell", command="true", queue=name)  # type: ignore[arg-type]
        except ValidationError as exc:
            raise InvalidRequest(f"bad queue name {name!r}: {exc.errors()[0]['msg']}") from None
        await engine.declare_queue(name, spec.ordering)
        return QueueInfo(name=name, ordering=QueueOrdering(spec.ordering))

    @app.post("/api/v1/tokens", dependencies=[admin], status_code=201)
    async def create_token(request: TokenRequest) -> TokenCreated:
        """A new token, shown once; 409 if the name exists, unless `replace`."""
        token = tokens.create(request.name, request.role, replace=request.replace)
        await open_sockets.close(request.name, f"token {request.name!r} was replaced")
        return TokenCreated(name=request.name, role=request.role, token=token)

    @app.get("/api/v1/tokens", dependencies=[admin])
    def list_tokens() -> list[TokenName]:
        return [TokenName(name=name, role=role) for name, role in tokens.names()]

    @app.delete("/api/v1/tokens/{name}", dependencies=[admin])
    async def revoke_token(name: str) -> dict[str, str]:
        """Revoke a token; the streams opened with it close (code 4401)."""
        if not tokens.revoke(name):
            raise NotFound(f"no token named {name!r}")
        await open_sockets.close(name, f"token {name!r} was revoked")
        return {"name": name, "status": "revoked"}

    @app.websocket("/api/v1/workers/ws")
    async def worker_stream(ws: WebSocket) -> None:
        if not await _accept(ws, Role.WORKER):
            return
        try:
            hello = p.decode_hello(await _receive(ws))
        except WebSocketDisconnect:
            return
        except p.OtherProtocol as exc:
            reason = (
                f"worker speaks protocol {exc.version}, this server speaks {PROTOCOL_VERSION}; "
                "install the same corral version on workers and server"
            )
            await ws.send_bytes(p.Refuse(reason).encode())
            await ws.close(code=CLOSE_BAD_FRAME, reason="protocol version mismatch")
            return
        except ProtocolError as exc:
            logger.warning("refused a worker's hello: %s", exc)
            await ws.close(code=CLOSE_BAD_FRAME, reason=close_reason(str(exc)))
            return
        peer = WorkerPeer(hello)
        refusal = engine.worker_joined(peer)
        if refusal is not None:
            logger.warning("refused a worker: %s", refusal)
            await ws.send_bytes(p.Refuse(refusal).encode())
            await ws.close(code=CLOSE_ID_IN_USE, reason=close_reason(refusal))
            return
        sender = asyncio.create_task(_pump(ws, peer, lambda: True))
        try:
            while True:
                for frame in p.decode_all(await _receive(ws), p.FROM_WORKER):
                    engine.worker_frame(peer, frame)
        except WebSocketDisconnect:
            pass
        except (ProtocolError, InvalidRequest) as exc:
            logger.warning("worker %s sent a bad frame: %s", hello.worker_id, exc)
            sender.cancel()
            with contextlib.suppress(Exception):
                await ws.close(code=CLOSE_BAD_FRAME, reason=close_reason(str(exc)))
        finally:
            engine.worker_left(peer)
            sender.cancel()

    @app.websocket("/api/v1/ws")
    async def client_stream(ws: WebSocket) -> None:
        role = await _accept(ws, Role.READ)
        if not role:
            return
        peer = Peer()
        submissions: set[asyncio.Task[None]] = set()
        # A call is answered alone (the lines of sync clients make one at a time): no waiting.
        sender = asyncio.create_task(_pump(ws, peer, lambda: bool(submissions)))
        watches: set[asyncio.Task[None]] = set()  # reading ended runs; moot once it hangs up
        try:
            while True:
                try:
                    frame = p.decode(await _receive(ws), p.FROM_CLIENT)
                except p.RequestRejected as exc:
                    peer.send(p.Error(exc.request_id, 422, str(exc)))
                    continue
                if isinstance(frame, p.Submit):
                    # Concurrently: pipelined submissions share group commits.
                    task = asyncio.create_task(_submit_frame(peer, frame, role))
                    submissions.add(task)
                    task.add_done_callback(submissions.discard)
                elif isinstance(frame, p.Watch):
                    engine.subscriptions.watch(peer, frame.job_ids)
                elif isinstance(frame, p.Follow):
                    engine.subscriptions.follow(peer, frame.job_id)
                elif isinstance(frame, p.Call):
                    service.call(peer, frame, role)
                elif isinstance(frame, p.WatchRuns | p.WatchFlows):
                    task = asyncio.create_task(
                        flows.watchers.watch_runs(peer, frame.run_ids)
                        if isinstance(frame, p.WatchRuns)
                        else flows.watch_flows(peer, frame.names)
                    )
                    watches.add(task)
                    task.add_done_callback(watches.discard)
                else:
                    raise ProtocolError(f"unexpected {frame.TAG!r} frame from a client")
        except WebSocketDisconnect:
            pass
        except ProtocolError as exc:
            sender.cancel()
            with contextlib.suppress(Exception):
                await ws.close(code=CLOSE_BAD_FRAME, reason=close_reason(str(exc)))
        finally:
            engine.subscriptions.forget(peer)
            service.forget(peer)
            for task in watches:
                task.cancel()
            flows.watchers.forget(peer)
            sender.cancel()

    async def _submit_frame(peer: Peer, frame: p.Submit, role: Role) -> None:
        peer.send(await _submission(frame, role))

    async def _submission(frame: p.Submit, role: Role) -> p.Frame:
        if not allows(role, Role.SUBMIT):
            return p.Error(frame.request_id, 403, f"a {role} token cannot submit jobs")
        if len(frame.specs) > MAX_BATCH_JOBS:
            message = f"at most {MAX_BATCH_JOBS} jobs per batch; split the submission"
            return p.Error(frame.request_id, 413, message)
        try:
            specs = _SPECS.validate_python(frame.specs)
            ids = await engine.submit(specs)
            return p.Submitted(frame.request_id, ids, engine.unserved_warnings(specs))
        except ValidationError as exc:
            return p.Error(frame.request_id, 422, describe_validation_error(exc, "jobs"))
        except CorralError as exc:
            return p.Error(frame.request_id, http_status(exc), str(exc))

    async def _accept(ws: WebSocket, needed: Role) -> Role | None:
        """Accept the socket if its token allows `needed`; otherwise close it saying why. An
        accepted socket is closed when its token is revoked or replaced."""
        await ws.accept()
        # Looked up after the accept, with no await before add(): a revocation cannot fall
        # between the check and the registration.
        found = tokens.lookup(_bearer(ws.headers.get("authorization")))
        if found is None:
            await ws.close(code=CLOSE_UNAUTHORIZED, reason="missing or unknown token")
            return None
        if not allows(found.role, needed):
            reason = f"a {found.role} token cannot open this stream"
            await ws.close(code=CLOSE_FORBIDDEN, reason=reason)
            return None
        open_sockets.add(found.name, ws)
        return found.role

    return app


async def _receive(ws: WebSocket) -> bytes:
    """The next message; a text one is a bad frame, not a KeyError."""
    message = await ws.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    data = message.get("bytes")
    if data is None:
        raise ProtocolError("expected a binary message holding msgpack frames, got text")
    return data


def close_reason(text: str) -> str:
    """`text` cut to what a close frame carries (123 bytes of UTF-8)."""
    data = text.encode()
    return text if len(data) <= 123 else data[:120].decode(errors="ignore") + "..."


async def _pump(ws: WebSocket, peer: Peer, more_coming: Callable[[], bool]) -> None:
    """Send the peer's queued frames in order; None closes the socket. While `more_coming()`,
    frames wait for a turn of the loop first, so that callbacks ready now (a worker's jobs and
    the ack of its results, answers to pipelined submissions) add to the same message."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            data = await peer.outbox.get()
            if more_coming():
                await asyncio.sleep(0)
            batch: list[bytes] = []
            while data is not None:
                batch.append(data)
                if peer.outbox.empty():
                    break
                data = peer.outbox.get_nowait()
            for message in p.bundle(batch) if batch else []:  # bundles that fit a message
                await ws.send_bytes(message)
            if data is None:
                break
        await ws.close()
