"""``ka2er serve``'s HTTP API (FastAPI): sessions on uploaded images, prompts in RAS mm, changed
regions back.

Every route but ``/health`` needs the bearer token (checked by :class:`~.guard.Guard` before the body
is read). Uploads are :mod:`~.wire` containers; prompt replies carry only the changed (k, j, i)
region of the target's mask. A session unknown, expired or evicted answers 404 with
``"code": "session_expired"``; the client uploads the image again.
"""

from __future__ import annotations

import asyncio
import logging
import math
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field, fields
from typing import Annotated, Optional

import numpy as np
from fastapi import Body, FastAPI, Header, Path, Request, Response, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, StrictBool
from starlette.requests import ClientDisconnect

from .. import __version__
from ..bundle import Bundle
from ..bundle.registry import prompt_types
from ..errors import Ka2erError, PromptError
from ..inference.prefetch import BACKGROUND_BYTES
from ..inference.session import InteractiveSession
from ..modelspace.strokes import MAX_STROKE_POINTS
from .guard import Guard, TokenBuckets
from .sessions import Entry, SessionGone, SessionStore, SessionTooLarge, held_bytes, short_ids
from .wire import WireError, decode_array, decode_volume, encode_array, encode_region
from .worker import ModelWorker, WorkerBusy

log = logging.getLogger("ka2er.server")
BINARY_BODY = {"requestBody": {"required": True, "content": {"application/octet-stream": {
    "schema": {"type": "string", "format": "binary"}}}}}
BINARY_REPLY = {200: {"content": {"application/octet-stream": {
    "schema": {"type": "string", "format": "binary"}}}, "description": "a KA2V container"}}


class ServerConfigError(Ka2erError):
    """The server would start in an unsafe or impossible configuration."""


def limit(default, flag: Optional[str] = None, unit: int = 1):
    """A :class:`Limits` field; ``flag``: the ``ka2er serve`` option that sets it, in ``unit``s."""
    return field(default=default, metadata={"flag": flag, "unit": unit})


@dataclass(frozen=True)
class Limits:
    """Bounds on what a client may send and what the server keeps; each a positive finite number."""

    max_upload_bytes: int = limit(1 << 30, "--max-upload-mb", 1 << 20)
    max_json_bytes: int = limit(64 << 10)
    max_voxels: int = limit(512 * 512 * 1024, "--max-voxels")
    max_prompts: int = limit(500)
    """Prompts per target before it must be reset."""
    max_targets: int = limit(64, "--max-targets")
    """Targets per session; a new one past it answers 409 until one is reset."""
    max_sessions: int = limit(16, "--max-sessions")
    max_memory_bytes: int = limit(8 << 30, "--max-memory-gb", 1 << 30)
    """All sessions together (images, masks, undo copies, cached and background embeddings); not the
    model. Each session's background embeddings may take up to this over ``max_sessions`` (at most
    :data:`BACKGROUND_BYTES`)."""
    idle_seconds: float = limit(1800.0, "--idle-minutes", 60)
    rate_per_second: float = limit(50.0, "--rate")
    rate_burst: int = limit(200)
    max_queue: int = limit(64)
    """Requests waiting for the model before new ones get 503."""
    read_timeout_s: float = limit(20.0, "--read-timeout")
    """A request's headers must arrive within this time, and its body may not pause for longer."""
    keep_alive_s: float = limit(5.0, "--keep-alive")
    """An idle kept-alive connection is closed after this time."""

    def __post_init__(self):
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    math.isfinite(value) and value > 0):
                unit = item.metadata["unit"]
                shown = value / unit if unit != 1 and isinstance(value, (int, float)) else value
                raise ServerConfigError(f"must be a positive number, got {shown!r}",
                                        field=item.metadata["flag"] or item.name)

    @classmethod
    def from_options(cls, options: dict) -> "Limits":
        """The limits ``ka2er serve``'s options set (``options``: argparse's names and values, each
        in its flag's unit); the others keep their defaults."""
        values = {}
        for item in fields(cls):
            flag = item.metadata["flag"]
            if flag is not None:
                value = options[flag.lstrip("-").replace("-", "_")] * item.metadata["unit"]
                whole = isinstance(item.default, int) and math.isfinite(value)
                values[item.name] = int(value) if whole else value
        return cls(**values)


Coordinate = Annotated[float, Field(allow_inf_nan=False, ge=-1e6, le=1e6)]
Ras = tuple[Coordinate, Coordinate, Coordinate]
SessionId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
TargetName = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")]
RequestId = Annotated[Optional[str], Header(alias="X-Request-Id", max_length=64)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PointRequest(Strict):
    ras: Ras = Field(description="RAS mm")
    positive: StrictBool = True


class BoxRequest(Strict):
    corner_a: Ras = Field(description="RAS mm")
    corner_b: Ras = Field(description="RAS mm, the opposite corner")


class StrokeRequest(Strict):
    points: list[Ras] = Field(max_length=MAX_STROKE_POINTS,
                              description="RAS mm: a scribble's polyline (2 or more points) or a "
                                          "lasso's closed curve on one slice (3 or more)")
    positive: StrictBool = True


class MemberRequest(Strict):
    member: Optional[str] = Field(None, max_length=128, description="null: the bundle decides")


class OverlapRequest(Strict):
    overlap: StrictBool = Field(description="false: each prompt leaves the other segments' voxels alone")


class ChangedRegion(BaseModel):
    region: list[list[int]] = Field(description="(k, j, i) [start, stop) of the rewritten voxels")
    bits: str = Field(description="the region's mask: packbits, zlib, base64")


class PromptReply(BaseModel):
    changed: Optional[ChangedRegion]
    score: float
    member: str = Field(description="the bundle member that answered")
    latency_ms: float = Field(description="model time on the server")
    undo_depth: int


class UndoReply(BaseModel):
    changed: Optional[ChangedRegion]
    undo_depth: int


class SessionReply(BaseModel):
    session: str
    shape: list[int] = Field(description="(k, j, i)")
    members: list[str]
    expires_after_idle_s: float


class Background(BaseModel):
    ready: int = Field(description="crops of the current target's next corrections embedded already")
    planned: int = Field(description="crops planned for them (within the budget)")
    bytes: int = Field(description="bytes of the embeddings kept for them")
    budget: int
    done: bool = Field(description="nothing left to compute")


class SessionInfo(SessionReply):
    memory_bytes: int = Field(description="what the session holds, its background budget included")
    background: Background


class Problem(BaseModel):
    detail: str
    code: Optional[str] = None


ERRORS = {status: {"model": Problem} for status in (400, 401, 404, 409, 413, 422, 429, 503, 507)}


class TooManyTargets(RuntimeError):
    """A prompt or mask would start one target more than a session may hold."""


def create_app(bundle: Bundle, token: Optional[str], limits: Limits = Limits(),
               device: str = "auto") -> FastAPI:
    """The API over ``bundle``. ``token`` None: no token check (only for ``--insecure-local``)."""
    store = SessionStore(limits.max_sessions, limits.max_memory_bytes, limits.idle_seconds)
    worker = ModelWorker(limits.max_queue)
    background_bytes = min(BACKGROUND_BYTES, limits.max_memory_bytes // limits.max_sessions)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        worker.shutdown()

    app = FastAPI(title="KA2ER Segment server", version=__version__, lifespan=lifespan,
                  description="Interactive 3D segmentation sessions for the KA2ER Segment Slicer module.")
    app.state.store, app.state.worker, app.state.limits = store, worker, limits
    uploads = {("POST", "/sessions")}

    def body_limit(method: str, path: str) -> int:
        if (method, path) in uploads or (method == "PUT" and path.endswith("/mask")):
            return limits.max_upload_bytes
        return limits.max_json_bytes

    app.add_middleware(Guard, token=token, buckets=TokenBuckets(limits.rate_per_second, limits.rate_burst),
                       body_limit=body_limit)
    secured = [Security(HTTPBearer(auto_error=False))]  # documents the scheme; Guard enforces it

    @app.exception_handler(Ka2erError)
    async def bad_input(request: Request, err: Ka2erError):
        return JSONResponse({"detail": str(err)}, status_code=400 if isinstance(err, WireError) else 422)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError):
        """Where and what, without echoing the input (it may hold NaN, or be large)."""
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        return JSONResponse({"detail": problems}, status_code=422)

    @app.exception_handler(SessionGone)
    async def session_gone(request: Request, err: SessionGone):
        return JSONResponse({"detail": "session expired, evicted or unknown: upload the image again",
                             "code": "session_expired"}, status_code=404)

    @app.exception_handler(SessionTooLarge)
    async def too_large(request: Request, err: SessionTooLarge):
        code = "session_too_large_dropped" if err.dropped else "session_too_large"
        return JSONResponse({"detail": str(err), "code": code}, status_code=507)

    @app.exception_handler(TooManyTargets)
    async def too_many_targets(request: Request, err: TooManyTargets):
        return JSONResponse({"detail": str(err), "code": "too_many_targets"}, status_code=409)

    @app.exception_handler(ClientDisconnect)
    async def went_away(request: Request, err: ClientDisconnect):
        log.info("the connection from %s closed during %s %s before its body arrived (the client went "
                 "away, or its body stalled past the read timeout)", (request.client or ("?",))[0],
                 request.method, short_ids(request.url.path))
        return Response(status_code=400)  # nobody reads it

    @app.exception_handler(WorkerBusy)
    async def busy(request: Request, err: WorkerBusy):
        return JSONResponse({"detail": f"server busy: {err}"}, status_code=503,
                            headers={"Retry-After": "1"})

    async def run(session_id: str, entry: Entry, work, grows: bool = False):
        """``work(session)`` on the model thread; the session's size recorded afterwards. ``grows``:
        the work may start a target and keep an undo copy (room for two masks is made first)."""
        if grows:
            store.reserve(session_id, 2 * entry.session.volume.array.size)

        def job():
            result = work(entry.session)
            return result, held_bytes(entry.session)
        result, nbytes = await worker.run(job)
        store.update(session_id, nbytes)
        return result

    async def once(session_id: str, route: str, target: str, request_id: Optional[str], work) -> dict:
        """Run ``work(session)`` (a prompt or undo on ``target``); a retried request (the same id on
        the same target and route) shares the first one's reply."""
        entry = store.get(session_id)
        grows = route != "undo"
        if request_id is None:
            return await run(session_id, entry, work, grows)
        key = (route, target, request_id)
        if key not in entry.replies:
            store.remember(entry, key, asyncio.ensure_future(run(session_id, entry, work, grows)))
        return await asyncio.shield(entry.replies[key])

    def open_target(session: InteractiveSession, name: str) -> None:
        """Make ``name`` current, refusing a new one past ``max_targets``."""
        if name not in session.targets and len(session.targets) >= limits.max_targets:
            raise TooManyTargets(f"the session has {len(session.targets)} targets, the limit "
                                 "(--max-targets): reset one first")
        session.set_target(name)

    def existing_target(session: InteractiveSession, name: str) -> bool:
        """Make ``name`` current; whether it exists (reading one that does not creates nothing)."""
        session.set_target(name)
        return name in session.targets

    def prompt(target: str, call):
        def work(session: InteractiveSession) -> dict:
            open_target(session, target)
            if session.undo_depth >= limits.max_prompts:
                raise PromptError(f"target {target!r} has {limits.max_prompts} prompts, the limit; "
                                  "reset it", field="target")
            result = call(session)
            return {"changed": encode_region(session.mask, result.region), "score": result.score,
                    "member": result.member, "latency_ms": result.latency_ms,
                    "undo_depth": session.undo_depth}
        return work

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "version": __version__}

    @app.get("/capabilities", dependencies=secured, responses=ERRORS)
    async def capabilities() -> dict:
        default = bundle.default
        return {"version": __version__, "device": device,
                "bundle": {"kind": bundle.kind, "labels": bundle.meta.get("labels", []),
                           "members": list(bundle.members), "gate": bundle.gate is not None,
                           "crop_size": default.crop_size, "base_spacing": default.base_spacing,
                           "max_spacing": default.max_spacing},
                "prompts": list(prompt_types(bundle)),
                "limits": asdict(limits)}

    @app.post("/sessions", status_code=201, dependencies=secured, responses=ERRORS,
              openapi_extra=BINARY_BODY)
    async def create_session(request: Request) -> SessionReply:
        """Upload an image (a KA2V container with its ijk_to_ras) and start a session on it."""
        volume = await run_in_threadpool(decode_volume, await request.body(), limits.max_voxels,
                                         limits.max_memory_bytes)

        def start() -> InteractiveSession:
            session = InteractiveSession(bundle, device=device, background=True,
                                         background_bytes=background_bytes)
            session.set_image(volume)
            return session
        session = await worker.run(start)
        session_id = store.add(session, held_bytes(session))
        log.info("%s: image %s %s, %d sessions, %.0f MB", short_ids(f"/sessions/{session_id}"),
                 volume.shape, volume.array.dtype, len(store), store.nbytes / 1e6)
        return SessionReply(session=session_id, shape=list(volume.shape), members=session.members,
                            expires_after_idle_s=limits.idle_seconds)

    @app.get("/sessions/{session_id}", dependencies=secured, responses=ERRORS)
    async def session_info(session_id: SessionId) -> SessionInfo:
        """The session, and how far its background embeddings are (read at once: never queued
        behind the model's work)."""
        entry = store.get(session_id)
        session = entry.session
        return SessionInfo(session=session_id, shape=list(session.volume.shape), members=session.members,
                           expires_after_idle_s=limits.idle_seconds, memory_bytes=entry.nbytes,
                           background=Background(**asdict(session.background)))

    @app.delete("/sessions/{session_id}", status_code=204, dependencies=secured, responses=ERRORS)
    async def delete_session(session_id: SessionId) -> Response:
        store.remove(session_id)
        return Response(status_code=204)

    @app.post("/sessions/{session_id}/targets/{target}/points", dependencies=secured, responses=ERRORS)
    async def add_point(session_id: SessionId, target: TargetName, body: PointRequest,
                        request_id: RequestId = None) -> PromptReply:
        return await once(session_id, "points", target, request_id,
                          prompt(target, lambda s: s.add_point(body.ras, positive=body.positive)))

    @app.post("/sessions/{session_id}/targets/{target}/boxes", dependencies=secured, responses=ERRORS)
    async def add_box(session_id: SessionId, target: TargetName, body: BoxRequest,
                      request_id: RequestId = None) -> PromptReply:
        return await once(session_id, "boxes", target, request_id,
                          prompt(target, lambda s: s.add_box(body.corner_a, body.corner_b)))

    @app.post("/sessions/{session_id}/targets/{target}/scribbles", dependencies=secured,
              responses=ERRORS)
    async def add_scribble(session_id: SessionId, target: TargetName, body: StrokeRequest,
                           request_id: RequestId = None) -> PromptReply:
        """A polyline (2 or more points) on the target (positive) or off it."""
        return await once(session_id, "scribbles", target, request_id,
                          prompt(target, lambda s: s.add_scribble(body.points, body.positive)))

    @app.post("/sessions/{session_id}/targets/{target}/lassos", dependencies=secured,
              responses=ERRORS)
    async def add_lasso(session_id: SessionId, target: TargetName, body: StrokeRequest,
                        request_id: RequestId = None) -> PromptReply:
        """A closed curve on one slice: its enclosed voxels are in the target (positive) or out."""
        return await once(session_id, "lassos", target, request_id,
                          prompt(target, lambda s: s.add_lasso(body.points, body.positive)))

    @app.post("/sessions/{session_id}/targets/{target}/undo", dependencies=secured, responses=ERRORS)
    async def undo(session_id: SessionId, target: TargetName, request_id: RequestId = None) -> UndoReply:
        def work(session: InteractiveSession) -> dict:
            if not existing_target(session, target):
                return {"changed": None, "undo_depth": 0}
            region = session.undo()
            return {"changed": encode_region(session.mask, region), "undo_depth": session.undo_depth}
        return await once(session_id, "undo", target, request_id, work)

    @app.post("/sessions/{session_id}/targets/{target}/reset", status_code=204, dependencies=secured,
              responses=ERRORS)
    async def reset(session_id: SessionId, target: TargetName) -> Response:
        def work(session: InteractiveSession) -> None:
            session.set_target(target)
            session.reset()
        await run(session_id, store.get(session_id), work)
        return Response(status_code=204)

    @app.put("/sessions/{session_id}/targets/{target}/mask", status_code=204, dependencies=secured,
             responses=ERRORS, openapi_extra=BINARY_BODY)
    async def set_mask(session_id: SessionId, target: TargetName, request: Request) -> Response:
        """Start the target from an existing mask: a uint8 KA2V container of the image's shape."""
        entry = store.get(session_id)
        array, _ = await run_in_threadpool(decode_array, await request.body(), limits.max_voxels, "mask")
        if array.dtype != np.uint8:
            raise WireError(f"expected uint8, got {array.dtype}", field="mask.dtype")

        def work(session: InteractiveSession) -> None:
            open_target(session, target)
            session.set_mask(array)
        await run(session_id, entry, work, grows=True)
        return Response(status_code=204)

    @app.get("/sessions/{session_id}/targets/{target}/mask", dependencies=secured,
             responses={**ERRORS, **BINARY_REPLY}, response_class=Response)
    async def get_mask(session_id: SessionId, target: TargetName) -> Response:
        """The target's whole mask as a uint8 KA2V container."""
        def work(session: InteractiveSession) -> bytes:
            if existing_target(session, target):
                return encode_array(session.mask)
            return encode_array(np.zeros(session.volume.shape, dtype=np.uint8))
        data = await run(session_id, store.get(session_id), work)
        return Response(data, media_type="application/octet-stream")

    @app.put("/sessions/{session_id}/member", dependencies=secured, responses=ERRORS)
    async def pin(session_id: SessionId, body: MemberRequest = Body()) -> MemberRequest:
        """Let one member of a moe bundle answer every prompt (null: the gate decides again)."""
        await run(session_id, store.get(session_id), lambda s: s.pin(body.member))
        return body

    @app.put("/sessions/{session_id}/overlap", dependencies=secured, responses=ERRORS)
    async def overlap(session_id: SessionId, body: OverlapRequest = Body()) -> OverlapRequest:
        """Whether segments may overlap (default true); false: each prompt's paste keeps off the
        other segments' voxels, which stay as they are."""
        await run(session_id, store.get(session_id), lambda s: setattr(s, "overlap", body.overlap))
        return body

    return app
