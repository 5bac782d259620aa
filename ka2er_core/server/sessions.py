"""The server's sessions: ids, idle expiry, least-recently-used eviction past a count or memory limit."""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

from ..inference.session import InteractiveSession


class SessionGone(LookupError):
    """The session id is unknown, expired or evicted; the client should upload the image again."""


@dataclass
class Entry:
    session: InteractiveSession
    last_used: float
    nbytes: int = 0  # InteractiveSession.memory_bytes after its last request
    replies: dict = field(default_factory=dict)
    """Request id -> the task answering it, for the last few prompts (a client's retry of a prompt
    whose reply it never got shares that reply instead of applying the prompt twice)."""


class SessionStore:
    """Sessions by id. Used from the event loop only (the model worker runs the sessions' work).

    A session idle for ``idle_seconds`` expires; past ``max_sessions`` sessions or ``max_bytes`` in
    all, the least recently used are evicted (never the one being added or used).
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
        entry.last_used = self.clock()
        self._entries.move_to_end(session_id)
        return entry

    def update(self, session_id: str, nbytes: int) -> None:
        """Record a session's size after work on it, evicting others if the total grew too big."""
        entry = self._entries.get(session_id)
        if entry is not None:
            entry.nbytes = nbytes
            self._evict(keep=session_id)

    def remember(self, entry: Entry, request_id: str, reply: Any, keep: int = 8) -> None:
        entry.replies[request_id] = reply
        while len(entry.replies) > keep:
            entry.replies.pop(next(iter(entry.replies)))

    def remove(self, session_id: str) -> None:
        if self._entries.pop(session_id, None) is None:
            raise SessionGone(session_id)

    def sweep(self) -> None:
        """Drop sessions idle for longer than ``idle_seconds``."""
        now = self.clock()
        for session_id in [s for s, e in self._entries.items() if now - e.last_used > self.idle_seconds]:
            del self._entries[session_id]

    def _evict(self, keep: str) -> None:
        while len(self._entries) > 1 and (len(self._entries) > self.max_sessions
                                          or self.nbytes > self.max_bytes):
            oldest = next(s for s in self._entries if s != keep)
            del self._entries[oldest]
            self.evicted += 1
        self.peak_sessions = max(self.peak_sessions, len(self._entries))
        self.peak_bytes = max(self.peak_bytes, self.nbytes)
