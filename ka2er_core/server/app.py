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
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Annotated, Optional

import numpy as np
from fastapi import Body, FastAPI, Header, Path, Request, Response, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from .. import __version__
from ..bundle import Bundle
from ..errors import Ka2erError, PromptError
from ..inference.session import InteractiveSession
from .guard import Guard, TokenBuckets
from .sessions import Entry, SessionGone, SessionStore
from .wire import WireError, decode_array, decode_volume, encode_array, encode_region
from .worker import ModelWorker, WorkerBusy

log = logging.getLogger("ka2er.server")
BINARY_BODY = {"requestBody": {"required": True, "content": {"application/octet-stream": {
    "schema": {"type": "string", "format": "binary"}}}}}
BINARY_REPLY = {200: {"content": {"application/octet-stream": {
    "schema": {"type": "string", "format": "binary"}}}, "description": "a KA2V container"}}


@dataclass(frozen=True)
class Limits:
    """Bounds on what a client may send and what the server keeps."""

    max_upload_bytes: int = 1 << 30
    max_json_bytes: int = 64 << 10
    max_voxels: int = 512 * 512 * 1024
    max_prompts: int = 500
    """Prompts per target before it must be reset."""
    max_sessions: int = 16
    max_memory_bytes: int = 8 << 30
    """All sessions together (images, masks, undo copies, cached embeddings); not the model."""
    idle_seconds: float = 1800.0
    rate_per_second: float = 50.0
    rate_burst: int = 200
    max_queue: int = 64
    """Requests waiting for the model before new ones get 503."""


Coordinate = Annotated[float, Field(allow_inf_nan=False, ge=-1e6, le=1e6)]
Ras = tuple[Coordinate, Coordinate, Coordinate]
SessionId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
TargetName = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")]
RequestId = Annotated[Optional[str], Header(alias="X-Request-Id", max_length=64)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PointRequest(Strict):
    ras: Ras = Field(description="RAS mm")
    positive: bool = True


class BoxRequest(Strict):
    corner_a: Ras = Field(description="RAS mm")
    corner_b: Ras = Field(description="RAS mm, the opposite corner")


class MemberRequest(Strict):
    member: Optional[str] = Field(None, max_length=128, description="null: the bundle decides")


class ChangedRegion(BaseModel):
    region: list[list[int]] = Field(description="(k, j, i) [start, stop) of the rewritten voxels")
    bits: str = Field(description="the region's mask: packbits, zlib, base64")


class PromptReply(BaseModel):
    changed: Optional[ChangedRegion]
    score: float
    expert: str
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


class Problem(BaseModel):
    detail: str
    code: Optional[str] = None


ERRORS = {status: {"model": Problem} for status in (400, 401, 404, 413, 422, 429, 503)}


def create_app(bundle: Bundle, token: Optional[str], limits: Limits = Limits(),
               device: str = "auto") -> FastAPI:
    """The API over ``bundle``. ``token`` None: no token check (only for ``--insecure-local``)."""
    store = SessionStore(limits.max_sessions, limits.max_memory_bytes, limits.idle_seconds)
    worker = ModelWorker(limits.max_queue)

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

    @app.exception_handler(WorkerBusy)
    async def busy(request: Request, err: WorkerBusy):
        return JSONResponse({"detail": f"server busy: {err}"}, status_code=503,
                            headers={"Retry-After": "1"})

    async def run(session_id: str, entry: Entry, work):
        """``work(session)`` on the model thread; the session's size recorded afterwards."""
        def job():
            result = work(entry.session)
            return result, entry.session.memory_bytes
        result, nbytes = await worker.run(job)
        store.update(session_id, nbytes)
        return result

    async def once(session_id: str, request_id: Optional[str], work) -> dict:
        """Run ``work(session)``; a retried request (same id) shares the first one's reply."""
        entry = store.get(session_id)
        if request_id is None:
            return await run(session_id, entry, work)
        if request_id not in entry.replies:
            store.remember(entry, request_id, asyncio.ensure_future(run(session_id, entry, work)))
        return await asyncio.shield(entry.replies[request_id])

    def prompt(target: str, call):
        def work(session: InteractiveSession) -> dict:
            session.set_target(target)
            if session.undo_depth >= limits.max_prompts:
                raise PromptError(f"target {target!r} has {limits.max_prompts} prompts, the limit; "
                                  "reset it", field="target")
            result = call(session)
            return {"changed": encode_region(session.mask, result.region), "score": result.score,
                    "expert": result.expert, "latency_ms": result.latency_ms,
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
                "prompts": ["point", "box"],
                "limits": asdict(limits)}

    @app.post("/sessions", status_code=201, dependencies=secured, responses=ERRORS,
              openapi_extra=BINARY_BODY)
    async def create_session(request: Request) -> SessionReply:
        """Upload an image (a KA2V container with its ijk_to_ras) and start a session on it."""
        volume = await run_in_threadpool(decode_volume, await request.body(), limits.max_voxels)

        def start() -> InteractiveSession:
            session = InteractiveSession(bundle, device=device)
            session.set_image(volume)
            return session
        session = await worker.run(start)
        session_id = store.add(session, session.memory_bytes)
        log.info("session %s: image %s %s, %d sessions, %.0f MB", session_id[:6], volume.shape,
                 volume.array.dtype, len(store), store.nbytes / 1e6)
        return SessionReply(session=session_id, shape=list(volume.shape), members=session.members,
                            expires_after_idle_s=limits.idle_seconds)

    @app.delete("/sessions/{session_id}", status_code=204, dependencies=secured, responses=ERRORS)
    async def delete_session(session_id: SessionId) -> Response:
        store.remove(session_id)
        return Response(status_code=204)

    @app.post("/sessions/{session_id}/targets/{target}/points", dependencies=secured, responses=ERRORS)
    async def add_point(session_id: SessionId, target: TargetName, body: PointRequest,
                        request_id: RequestId = None) -> PromptReply:
        return await once(session_id, request_id,
                          prompt(target, lambda s: s.add_point(body.ras, positive=body.positive)))

    @app.post("/sessions/{session_id}/targets/{target}/boxes", dependencies=secured, responses=ERRORS)
    async def add_box(session_id: SessionId, target: TargetName, body: BoxRequest,
                      request_id: RequestId = None) -> PromptReply:
        return await once(session_id, request_id,
                          prompt(target, lambda s: s.add_box(body.corner_a, body.corner_b)))

    @app.post("/sessions/{session_id}/targets/{target}/undo", dependencies=secured, responses=ERRORS)
    async def undo(session_id: SessionId, target: TargetName, request_id: RequestId = None) -> UndoReply:
        def work(session: InteractiveSession) -> dict:
            session.set_target(target)
            region = session.undo()
            return {"changed": encode_region(session.mask, region), "undo_depth": session.undo_depth}
        return await once(session_id, request_id, work)

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
            session.set_target(target)
            session.set_mask(array)
        await run(session_id, entry, work)
        return Response(status_code=204)

    @app.get("/sessions/{session_id}/targets/{target}/mask", dependencies=secured,
             responses={**ERRORS, **BINARY_REPLY}, response_class=Response)
    async def get_mask(session_id: SessionId, target: TargetName) -> Response:
        """The target's whole mask as a uint8 KA2V container."""
        def work(session: InteractiveSession) -> bytes:
            session.set_target(target)
            return encode_array(session.mask)
        data = await run(session_id, store.get(session_id), work)
        return Response(data, media_type="application/octet-stream")

    @app.put("/sessions/{session_id}/member", dependencies=secured, responses=ERRORS)
    async def pin(session_id: SessionId, body: MemberRequest = Body()) -> MemberRequest:
        """Let one member of a moe bundle answer every prompt (null: the gate decides again)."""
        await run(session_id, store.get(session_id), lambda s: s.pin(body.member))
        return body

    return app
