"""The server's sessions: ids, idle expiry, least-recently-used eviction past a count or memory limit."""

from __future__ import annotations

import re
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

from ..inference.session import InteractiveSession


SHOWN_ID_CHARACTERS = 6
"""Logs show a session id's first characters only: with the token, an id opens its session, and more
people read logs than hold the token."""
SESSION_IN_PATH = re.compile(r"(/sessions/[A-Za-z0-9_-]{%d})[A-Za-z0-9_-]+" % SHOWN_ID_CHARACTERS)


def short_ids(text: str) -> str:
    """``text`` (a URL path, a log line) with each ``/sessions/{id}`` cut to the id's first characters."""
    return SESSION_IN_PATH.sub(r"\1...", text)


class SessionGone(LookupError):
    """The session id is unknown, expired or evicted; the client should upload the image again."""


class SessionTooLarge(RuntimeError):
    """The session would hold (or held, and was dropped for it) more than the memory of all sessions."""

    def __init__(self, detail: str, dropped: bool):
        super().__init__(detail)
        self.dropped = dropped


UPLOAD_GRACE_SECONDS = 10.0
"""How long after its upload a session that has not had a request yet is evicted last."""


@dataclass
class Entry:
    session: InteractiveSession
    last_used: float
    nbytes: int = 0  # held_bytes(session) after its last request
    replies: dict = field(default_factory=dict)
    """(route, target, request id) -> the task answering it, for the last few prompts (a client's retry
    of a prompt whose reply it never got shares that reply instead of applying the prompt twice)."""
    used: bool = False
    """Whether a request came for it since its upload."""


class SessionStore:
    """Sessions by id. Used from the event loop only (the model worker runs the sessions' work).

    A session idle for ``idle_seconds`` expires; past ``max_sessions`` sessions or ``max_bytes`` in
    all, the least recently used are evicted. The session being used is never evicted for another, but
    it may not outgrow ``max_bytes`` alone: a request that could take it past is refused
    (:meth:`reserve`), and one that did take it past drops it (:meth:`update`).
    """

    def __init__(self, max_sessions: int, max_bytes: int, idle_seconds: float,
                 clock: Callable[[], float] = time.monotonic):
        self.max_sessions, self.max_bytes, self.idle_seconds = max_sessions, max_bytes, idle_seconds
        self.clock = clock
        self._entries: "OrderedDict[str, Entry]" = OrderedDict()
        self.evicted = 0
        self.peak_bytes = 0
        self.peak_sessions = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self._entries.values())

    def add(self, session: InteractiveSession, nbytes: int) -> str:
        self.sweep()
        session_id = secrets.token_urlsafe(18)
        self._entries[session_id] = Entry(session, self.clock(), nbytes)
        self._evict(keep=session_id)
        return session_id

    def get(self, session_id: str) -> Entry:
        self.sweep()
        entry = self._entries.get(session_id)
        if entry is None:
            raise SessionGone(session_id)
        entry.last_used, entry.used = self.clock(), True
        self._entries.move_to_end(session_id)
        return entry

    def reserve(self, session_id: str, growth: int) -> None:
        """Make room for ``session_id`` to grow by up to ``growth`` bytes, evicting others; refuse with
        :class:`SessionTooLarge` when the session alone would then pass ``max_bytes``."""
        entry = self._entries.get(session_id)
        if entry is None:
            raise SessionGone(session_id)
        if entry.nbytes + growth > self.max_bytes:
            raise SessionTooLarge(f"this request could take the session to {mb(entry.nbytes + growth)}, "
                                  f"past the {mb(self.max_bytes)} the server keeps for all sessions "
                                  "(--max-memory-gb): reset targets you no longer need, or start a new "
                                  "session", dropped=False)
        self._evict(keep=session_id, growth=growth)

    def update(self, session_id: str, nbytes: int) -> None:
        """Record a session's size after work on it, evicting others if the total grew too big; a
        session grown past ``max_bytes`` alone is dropped (:class:`SessionTooLarge`)."""
        entry = self._entries.get(session_id)
        if entry is None:
            return
        entry.nbytes = nbytes
        if nbytes > self.max_bytes:
            self._drop(session_id)
            self.evicted += 1
            raise SessionTooLarge(f"the session grew to {mb(nbytes)}, past the {mb(self.max_bytes)} the "
                                  "server keeps for all sessions (--max-memory-gb), and was dropped: "
                                  "upload the image again", dropped=True)
        self._evict(keep=session_id)

    def remember(self, entry: Entry, key: Hashable, reply: Any, keep: int = 8) -> None:
        entry.replies[key] = reply
        while len(entry.replies) > keep:
            entry.replies.pop(next(iter(entry.replies)))

    def remove(self, session_id: str) -> None:
        if session_id not in self._entries:
            raise SessionGone(session_id)
        self._drop(session_id)

    def sweep(self) -> None:
        """Drop sessions idle for longer than ``idle_seconds``."""
        now = self.clock()
        for session_id in [s for s, e in self._entries.items() if now - e.last_used > self.idle_seconds]:
            self._drop(session_id)

    def _drop(self, session_id: str) -> None:
        """Forget a session, stopping its background embeddings (its thread may hold it a while)."""
        self._entries.pop(session_id).session.close()

    def _evict(self, keep: str, growth: int = 0) -> None:
        """Drop the least recently used sessions but ``keep`` until the count and the bytes (plus
        ``growth`` to come) fit. A session uploaded less than :data:`UPLOAD_GRACE_SECONDS` ago and
        not used yet goes last, so that many clients on few slots do not drop each other's new
        sessions before their first prompt."""
        now = self.clock()
        while len(self._entries) > 1 and (len(self._entries) > self.max_sessions
                                          or self.nbytes + growth > self.max_bytes):
            others = [s for s in self._entries if s != keep]
            waiting = {s for s in others if not self._entries[s].used
                       and now - self._entries[s].last_used < UPLOAD_GRACE_SECONDS}
            oldest = next((s for s in others if s not in waiting), others[0])
            self._drop(oldest)
            self.evicted += 1
        self.peak_sessions = max(self.peak_sessions, len(self._entries))
        self.peak_bytes = max(self.peak_bytes, self.nbytes)


def held_bytes(session: InteractiveSession) -> int:
    """What a session holds, counting in full the background embeddings it may still add (the
    worker fills its budget between requests, unseen by the store)."""
    return session.memory_bytes + session.prefetcher.headroom


def mb(nbytes: int) -> str:
    return f"{nbytes / 2**20:.0f} MB"
