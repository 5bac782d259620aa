"""``RemoteSession``: :class:`~ka2er_core.inference.session.InteractiveSession`'s methods over HTTP(S).

Standard library and numpy only (no torch, no web stack), so Slicer needs nothing extra to use a
server. The client keeps every target's mask locally and applies the changed regions the server
sends; prompts are checked locally before they travel. One persistent connection; connection errors
are retried with exponential backoff (prompts carry a request id, so a retried prompt is applied
once); 429/503 wait for ``Retry-After``. When the server has dropped the session (idle expiry,
eviction, restart) the client uploads the image again, restores every non-empty target mask, and
repeats the request: masks survive, the undo history of earlier prompts does not.
"""

from __future__ import annotations

import http.client
import json
import random
import ssl
import time
import uuid
from dataclasses import replace
from typing import Optional, Sequence, Union
from urllib.parse import quote, urlsplit

import numpy as np

from ..errors import Ka2erError, PromptError
from ..inference.result import (BackgroundStatus, Region, Result, check_box, check_lasso, check_mask,
                                check_point, check_stroke)
from ..volume import Volume
from .wire import decode_region, encode_array, encode_volume

MAX_WAIT_S = 10.0
RESTORE_ATTEMPTS = 8


class RemoteError(Ka2erError):
    """The server refused a request (4xx with its message) or failed (5xx)."""

    def __init__(self, problem: str, status: int, field: Optional[str] = None):
        super().__init__(problem, field=field)
        self.status = status


class AuthenticationError(RemoteError):
    """The server refused the token (HTTP 401)."""


class ServerUnavailableError(ConnectionError):
    """The server could not be reached after every retry."""


class SessionExpired(Exception):
    """Internal: the server no longer has this session."""


class RemoteSession:
    """A segmentation session on a ``ka2er serve`` server at ``url`` (http:// or https://).

    ``token``: the server's bearer token; ``timeout``: seconds per request; ``retries``: attempts
    after a connection error; ``ssl_context``: for https with a private certificate authority
    (e.g. ``ssl.create_default_context(cafile=...)``).
    """

    def __init__(self, url: str, token: Optional[str] = None, timeout: float = 120.0,
                 retries: int = 3, backoff: float = 0.5, ssl_context: Optional[ssl.SSLContext] = None):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise Ka2erError(f"expected http(s)://host[:port], got {url!r}", field="url")
        self.url = url.rstrip("/")
        self._secure = parts.scheme == "https"
        self._host, self._port = parts.hostname, parts.port
        self._base = parts.path.rstrip("/")
        self._token = token
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self._ssl = ssl_context
        self._connection: Optional[http.client.HTTPConnection] = None
        self.volume: Optional[Volume] = None
        self.session_id: Optional[str] = None
        self._members: Optional[list[str]] = None
        self._capabilities: Optional[dict] = None
        self.pinned: Optional[str] = None
        self._overlap = True
        self.target_name = "Segment_1"
        self._masks: dict[str, np.ndarray] = {}
        self._undo_depth: dict[str, int] = {}
        self.uploads = 0
        """How many times the image was uploaded (more than once: the server had dropped it)."""

    # ---- the InteractiveSession interface ----

    def set_image(self, volume: Volume) -> None:
        """Upload ``volume`` and start a session on it; clears targets."""
        self.close_session()
        self.volume = volume
        self._masks.clear()
        self._undo_depth.clear()
        self._upload()
        self.pinned = None

    @property
    def members(self) -> list[str]:
        if self._members is None:
            self._members = self.capabilities["bundle"]["members"]
        return list(self._members)

    @property
    def capabilities(self) -> dict:
        """The server's ``/capabilities``: its bundle, the prompts it takes, its limits."""
        if self._capabilities is None:
            self._capabilities = self._json("GET", "/capabilities")
        return self._capabilities

    @property
    def prompt_types(self) -> tuple[str, ...]:
        """The prompts the server's model takes: "point", "box" if it takes boxes, then "scribble"
        and "lasso" (as points)."""
        return tuple(self.capabilities["prompts"])

    def pin(self, member: Optional[str]) -> None:
        self._call("PUT", "/member", {"member": member})
        self.pinned = member

    @property
    def overlap(self) -> bool:
        """False: each prompt leaves the other targets' voxels alone (as InteractiveSession)."""
        return self._overlap

    @overlap.setter
    def overlap(self, allowed: bool) -> None:
        if self.session_id is not None:
            self._call("PUT", "/overlap", {"overlap": bool(allowed)})
        self._overlap = bool(allowed)

    def set_target(self, name: str) -> None:
        self.target_name = name

    @property
    def mask(self) -> np.ndarray:
        """The current target's mask, uint8 (k, j, i), kept up to date from the server's replies."""
        volume = self._require_image()
        if self.target_name not in self._masks:
            self._masks[self.target_name] = np.zeros(volume.shape, dtype=np.uint8)
        return self._masks[self.target_name]

    @property
    def targets(self) -> tuple[str, ...]:
        """The names of the targets this client has prompted or set."""
        return tuple(self._masks)

    @property
    def undo_depth(self) -> int:
        return self._undo_depth.get(self.target_name, 0)

    @property
    def background(self) -> BackgroundStatus:
        """How far the server's background embeddings of the current target's corrections are."""
        return BackgroundStatus(**self._call("GET", "")["background"])

    def add_point(self, ras: Sequence[float], positive: bool = True) -> Result:
        point = check_point(self._require_image(), ras, "point")
        return self._prompt("points", {"ras": point.tolist(), "positive": bool(positive)})

    def add_box(self, corner_a: Sequence[float], corner_b: Sequence[float]) -> Result:
        low, high, clipped = check_box(self._require_image(), corner_a, corner_b)
        result = self._prompt("boxes", {"corner_a": low.tolist(), "corner_b": high.tolist()})
        return replace(result, clipped=clipped)

    def add_scribble(self, points_ras: Sequence[Sequence[float]], positive: bool = True) -> Result:
        points = check_stroke(self._require_image(), points_ras, "scribble", 2)
        return self._prompt("scribbles", {"points": points.tolist(), "positive": bool(positive)})

    def add_lasso(self, points_ras: Sequence[Sequence[float]], positive: bool = True) -> Result:
        contour, _, _ = check_lasso(self._require_image(), points_ras)
        return self._prompt("lassos", {"points": contour.tolist(), "positive": bool(positive)})

    def set_mask(self, mask: Union[np.ndarray, Volume]) -> None:
        binary = check_mask(self._require_image(), mask)
        self._call("PUT", "/mask", body=encode_array(binary), target=True)
        self._masks[self.target_name] = binary
        self._undo_depth[self.target_name] = 0

    def undo(self) -> Optional[Region]:
        reply = self._call("POST", "/undo", target=True, request_id=True)
        self._undo_depth[self.target_name] = reply["undo_depth"]
        return self._apply(reply["changed"])

    def reset(self) -> None:
        self._call("POST", "/reset", target=True)
        self._masks.pop(self.target_name, None)
        self._undo_depth[self.target_name] = 0

    def close_session(self) -> None:
        """Tell the server to drop the session now (it would expire anyway)."""
        if self.session_id is not None:
            try:
                self._request("DELETE", f"/sessions/{self.session_id}")
            except (ConnectionError, RemoteError, SessionExpired):
                pass  # gone already, or unreachable: it expires on its own
            self.session_id = None

    def close(self) -> None:
        self.close_session()
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def __enter__(self) -> "RemoteSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- internals ----

    def _require_image(self) -> Volume:
        if self.volume is None:
            raise PromptError("no image: call set_image first", field="image")
        return self.volume

    def _prompt(self, kind: str, body: dict) -> Result:
        start = time.perf_counter()
        reply = self._call("POST", f"/{kind}", body, target=True, request_id=True)
        region = self._apply(reply["changed"])
        self._undo_depth[self.target_name] = reply["undo_depth"]
        return Result(region, reply["score"], reply["member"], (time.perf_counter() - start) * 1000)

    def _apply(self, changed: Optional[dict]) -> Optional[Region]:
        decoded = decode_region(changed, self._require_image().shape)
        if decoded is None:
            return None
        region, content = decoded
        self.mask[region] = content
        return region

    def _upload(self) -> None:
        reply = self._json("POST", "/sessions", body=encode_volume(self._require_image()),
                           content_type="application/octet-stream")
        self.session_id, self._members = reply["session"], reply["members"]
        self.uploads += 1
        if not self._overlap:  # a new server session starts with overlap allowed
            self._json("PUT", f"/sessions/{self.session_id}/overlap", {"overlap": False})

    def _restore(self) -> None:
        """The server lost the session: upload again, then every non-empty target mask and the pin."""
        self._upload()
        current = self.target_name
        for name, mask in list(self._masks.items()):
            if mask.any():
                self.target_name = name
                self._json("PUT", self._target_path("/mask"), body=encode_array(mask),
                           content_type="application/octet-stream")
        self.target_name = current
        self._undo_depth.clear()
        if self.pinned is not None:
            self._json("PUT", f"/sessions/{self.session_id}/member", {"member": self.pinned})

    def _target_path(self, suffix: str) -> str:
        return f"/sessions/{self.session_id}/targets/{quote(self.target_name, safe='')}{suffix}"

    def _call(self, method: str, suffix: str, body=None, target: bool = False,
              request_id: bool = False):
        """A request on this session; re-uploads once if the server has dropped it."""
        if self.session_id is None:
            self._require_image()
            self._upload()
        headers = {"X-Request-Id": uuid.uuid4().hex} if request_id else {}
        content_type = "application/octet-stream" if isinstance(body, bytes) else "application/json"
        for attempt in range(RESTORE_ATTEMPTS + 1):
            try:
                if attempt:
                    self._restore()
                path = self._target_path(suffix) if target else f"/sessions/{self.session_id}{suffix}"
                return self._json(method, path, body, content_type, headers)
            except SessionExpired:
                time.sleep(self.backoff * attempt * random.random())  # crowded server: spread out
        raise RemoteError(f"the server dropped the session {RESTORE_ATTEMPTS} times right after the "
                          "upload; it holds too many sessions for its clients (--max-sessions, "
                          "--max-memory-gb)", 404)

    def _json(self, method: str, path: str, body=None, content_type: str = "application/json",
              headers: Optional[dict] = None):
        status, data = self._request(method, path, body, content_type, headers)
        return None if status == 204 or not data else json.loads(data)

    def _request(self, method: str, path: str, body=None, content_type: str = "application/json",
                 headers: Optional[dict] = None) -> tuple[int, bytes]:
        if body is not None and not isinstance(body, bytes):
            body = json.dumps(body).encode()
        headers = {**(headers or {}), "Content-Type": content_type}
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token}"
        attempt = 0
        while True:
            try:
                connection = self._connect()
                connection.request(method, self._base + path, body=body, headers=headers)
                response = connection.getresponse()
                status, data = response.status, response.read()
                retry_after = response.getheader("Retry-After")
            except (OSError, http.client.HTTPException) as err:
                self._disconnect()
                if attempt >= self.retries:
                    raise ServerUnavailableError(f"cannot reach {self.url} ({type(err).__name__}: "
                                                 f"{err}) after {attempt + 1} attempts") from None
                time.sleep(self.backoff * 2 ** attempt)
                attempt += 1
                continue
            if status in (429, 503) and attempt < self.retries:
                time.sleep(min(float(retry_after or self.backoff * 2 ** attempt), MAX_WAIT_S))
                attempt += 1
                continue
            if status < 400:
                return status, data
            self._raise(status, data)

    def _raise(self, status: int, data: bytes):
        try:
            reply = json.loads(data)
            detail, code = reply.get("detail"), reply.get("code")
        except (ValueError, AttributeError):
            detail, code = data[:200].decode(errors="replace"), None
        if status == 404 and code == "session_expired":
            raise SessionExpired
        if status == 401:
            raise AuthenticationError(f"{self.url} refused the token (HTTP 401): check the server's "
                                      "token", 401, field="token")
        raise RemoteError(f"{self.url}: HTTP {status}: {detail}", status)

    def _connect(self) -> http.client.HTTPConnection:
        if self._connection is None:
            if self._secure:
                self._connection = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self.timeout,
                    context=self._ssl or ssl.create_default_context())
            else:
                self._connection = http.client.HTTPConnection(self._host, self._port,
                                                              timeout=self.timeout)
        return self._connection

    def _disconnect(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
