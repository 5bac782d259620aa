"""Below the ASGI app: how ``ka2er serve`` runs uvicorn. Slow or silent clients are cut off (a
request must arrive at a pace), ``X-Forwarded-For`` is believed only from the proxies named, and the
access log shows session ids cut short."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Optional

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from .app import Limits
from .sessions import short_ids

log = logging.getLogger("ka2er.server")


def request_timeout_reply() -> bytes:
    """A whole HTTP 408 response, written straight to the socket before closing it."""
    body = json.dumps({"detail": "the request did not arrive in time", "code": "request_timeout"})
    return (f"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
            f"content-length: {len(body)}\r\n\r\n{body}").encode()


REQUEST_TIMEOUT_REPLY = request_timeout_reply()


class ReadTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol with a bound on how long a client may take to send a request: its
    headers within :attr:`read_timeout` seconds of connecting (or of the previous reply), its body
    with no pause longer than that. A connection that overruns is answered 408 (when part of a request
    came) and closed. Time the app spends (the model, a slow reader) never counts."""

    read_timeout: float = Limits().read_timeout_s

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._watchdog: Optional[object] = None
        self._waiting_since = self.loop.time()
        self._watch()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._waiting_since = self.loop.time()
        self._watch()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _watch(self) -> None:
        """Arm the watchdog for what the client owes now: the rest of a request's headers (by a fixed
        deadline) or more of its body (within :attr:`read_timeout` from now); nothing otherwise."""
        self._disarm()
        if self.transport.is_closing():
            return
        state = self.conn.their_state
        if state is h11.IDLE:
            deadline = self._waiting_since + self.read_timeout
        elif state is h11.SEND_BODY:
            deadline = self.loop.time() + self.read_timeout
        else:
            return
        self._watchdog = self.loop.call_at(deadline, self._expire)

    def _disarm(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def _expire(self) -> None:
        self._watchdog = None
        if self.transport.is_closing():
            return
        if self.flow.read_paused:  # the app has not read what came: its delay, not the client's
            self._watchdog = self.loop.call_later(self.read_timeout, self._expire)
            return
        client = "%s:%d" % self.client if self.client else "a client"
        if not self._request_started():
            log.debug("closed the idle connection from %s after %g s", client, self.read_timeout)
        elif self.conn.their_state is h11.IDLE:  # a stalled body is logged by the app, which sees it end
            log.info("closed the connection from %s: its request headers did not arrive within %g s",
                     client, self.read_timeout)
        if self._request_started() and self._no_reply_started():
            self.transport.write(REQUEST_TIMEOUT_REPLY)
        self.transport.close()

    def _request_started(self) -> bool:
        """Whether part of a request has come (its body, or some bytes of its headers)."""
        return self.conn.their_state is h11.SEND_BODY or bool(self.conn.trailing_data[0])

    def _no_reply_started(self) -> bool:
        """Whether nothing of a reply to the late request has been sent (a 408 may still go)."""
        return self.conn.their_state is h11.IDLE or not self.cycle.response_started


def read_timeout_protocol(seconds: float) -> type:
    """:class:`ReadTimeoutProtocol` with ``read_timeout`` = ``seconds``."""
    return type("ReadTimeoutProtocol", (ReadTimeoutProtocol,), {"read_timeout": seconds})


class ShortSessionIds(logging.Filter):
    """Cuts the session ids in uvicorn's access-log lines to their first characters."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(short_ids(a) if isinstance(a, str) else a for a in record.args)
        return True


SHORT_SESSION_IDS = ShortSessionIds()


def uvicorn_config(app, limits: Limits, forwarded_allow_ips: str = "", **options) -> uvicorn.Config:
    """uvicorn's configuration for ``app``: the read and keep-alive timeouts of ``limits``, and the
    proxies in ``forwarded_allow_ips`` (comma-separated addresses or networks; empty: none) as the
    only peers whose ``X-Forwarded-For`` names the client. ``options`` go to :class:`uvicorn.Config`."""
    if options.get("ssl_certfile"):
        # A silent client that never completes the TLS handshake is held by asyncio, before any
        # protocol of ours sees it, for SSL_HANDSHAKE_TIMEOUT (60 s); uvicorn does not pass
        # create_server's ssl_handshake_timeout through, so the server process sets the default.
        asyncio.constants.SSL_HANDSHAKE_TIMEOUT = float(limits.read_timeout_s)
    config = uvicorn.Config(app, http=read_timeout_protocol(limits.read_timeout_s),
                            timeout_keep_alive=limits.keep_alive_s,
                            proxy_headers=bool(forwarded_allow_ips),
                            forwarded_allow_ips=forwarded_allow_ips or None, **options)
    logging.getLogger("uvicorn.access").addFilter(SHORT_SESSION_IDS)
    return config
