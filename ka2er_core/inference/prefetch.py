"""Background embeddings: after a prompt, a low-priority thread embeds the lattice crops that the
target's later corrections will land in, so that a correcting click costs a decode.

The session asks :class:`Prefetcher` to :meth:`~Prefetcher.follow` its current target after each
prompt; the worker plans the crops the mask's surface crosses (:meth:`Lattice.surface_crops`),
nearest the last prompt first, for the members that answer corrections, within a byte budget, and
embeds them one by one between prompts (never during one: :meth:`~Prefetcher.paused`). A new image
cancels it. The results do not depend on the worker: a crop it embedded holds the same embedding the
prompt path would have computed, and a prompt never waits for the worker except for the one crop
it needs while the worker is computing that very crop.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ..bundle import Segmenter
from ..modelspace import Crop
from ..modelspace.lattice import Lattice
from .embeddings import embedding_key
from .models import ImageModels
from .result import BackgroundStatus

BACKGROUND_BYTES = 448 << 20
"""Default budget of the background embeddings of one session: 35 crops of the shipped models (13.2 MB
each; the white matter's surface on bench_background's volume crosses 33 lattice cells), which 2
cores embed within about 10 s of the image; a 512x512x300 CT session stays within 1.5 GB."""
BACKGROUND_NICE = 10
log = logging.getLogger("ka2er.background")
_running: "weakref.WeakSet[Prefetcher]" = weakref.WeakSet()


@dataclass(frozen=True)
class Request:
    """What to prepare: ``mask``'s corrections, answered by ``members`` (in order), nearest ``near``."""

    members: tuple[Segmenter, ...]
    mask: np.ndarray
    near: np.ndarray


class Prefetcher:
    """The background worker of one session's :class:`ImageModels`: one daemon thread at a lower
    priority while there is work, none otherwise. ``budget``: bytes of embeddings it may keep;
    ``enabled`` False: it does nothing."""

    def __init__(self, models: ImageModels, budget: int = BACKGROUND_BYTES, enabled: bool = True):
        self.models, self.budget, self.enabled = models, budget, enabled
        self._lock = threading.Lock()
        self._request: Optional[Request] = None
        self._version = 0  # counts requests and cancels: the worker drops a plan made for an older one
        self._finished = 0  # the version whose plan the worker finished
        self._plan: list[tuple[Segmenter, Crop]] = []
        self._thread: Optional[threading.Thread] = None
        self._no_prompt = threading.Event()
        self._no_prompt.set()
        self._settled = threading.Event()  # set while the worker has nothing to do
        self._settled.set()

    def follow(self, members: Sequence[Segmenter], mask: np.ndarray, near) -> None:
        """Plan and embed the crops of ``mask``'s corrections (members in order of need, the first
        one's lattice), nearest ``near`` (RAS) first; replaces the previous plan. Returns at once."""
        if not self.enabled:
            return
        with self._lock:
            self._request = Request(tuple(members), mask, np.asarray(near, dtype=np.float64))
            self._version += 1
            self._settled.clear()
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="ka2er background embeddings",
                                                daemon=True)
                self._thread.start()
                _running.add(self)

    def cancel(self) -> None:
        """Stop and forget the plan (a new image; the cache is cleared by its owner)."""
        with self._lock:
            self._request, self._plan = None, []
            self._version += 1
            if self._thread is None:
                self._settled.set()

    def stop(self, timeout: float = 30.0) -> None:
        """:meth:`cancel`, and wait for the crop in progress (at most ``timeout`` seconds)."""
        self.cancel()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    @contextmanager
    def paused(self):
        """While a prompt runs, the worker starts no new crop."""
        self._no_prompt.clear()
        try:
            yield
        finally:
            self._no_prompt.set()

    def wait(self, timeout: Optional[float] = None) -> BackgroundStatus:
        """Block until the worker has nothing left to do, or ``timeout`` seconds (benchmarks,
        tests; the session never waits)."""
        self._settled.wait(timeout)
        return self.status

    @property
    def status(self) -> BackgroundStatus:
        with self._lock:
            plan, done = list(self._plan), self._request is None or self._finished == self._version
        keys = [embedding_key(member.name, crop) for member, crop in plan]
        return BackgroundStatus(self.models.embeddings.holds(keys), len(plan),
                                self.models.embeddings.kept_bytes, self.budget, done)

    @property
    def headroom(self) -> int:
        """Bytes the worker may still add (its budget less what it keeps)."""
        return max(self.budget - self.models.embeddings.kept_bytes, 0) if self.enabled else 0

    def _serve(self) -> None:
        lower_priority()
        while True:
            with self._lock:
                request, version = self._request, self._version
                if request is None or self._finished == version:
                    self._thread = None
                    self._settled.set()
                    return
            try:
                self._work(request, version)
            except Exception as error:  # the prompt path computes what is missing; nothing is lost
                log.warning("background embeddings stopped: %s: %s", type(error).__name__, error)
            with self._lock:
                if version == self._version:
                    self._finished = version

    def _work(self, request: Request, version: int) -> None:
        plan = self._planned(request)
        with self._lock:
            if version != self._version:
                return
            self._plan = plan
        wanted = {embedding_key(member.name, crop) for member, crop in plan}
        for done, (member, crop) in enumerate(plan):
            self._no_prompt.wait()
            if version != self._version:
                return
            if not self.models.keep_embedding(crop, member, self.budget, wanted):
                with self._lock:  # the budget is full (the size of an embedding was not known yet)
                    if version == self._version:
                        self._plan = plan[:done]
                return

    def _planned(self, request: Request) -> list[tuple[Segmenter, Crop]]:
        """(member, crop) pairs in order, as many as the budget holds."""
        planner = request.members[0]
        volume = self.models.volume
        lattice = Lattice(volume.grid, planner.crop_size, planner.base_spacing)
        crops = lattice.surface_crops(request.mask, volume.grid, request.near)
        plan, room = [], self.budget
        for member in request.members:
            size = self.models.embeddings.entry_bytes(member.name) or 0
            for crop in crops:
                if size > room:
                    return plan
                plan.append((member, crop))
                room -= size
        return plan


@atexit.register
def _stop_all() -> None:
    """Let each worker finish its crop before the interpreter goes (a daemon thread stopped inside
    torch aborts the process)."""
    for prefetcher in list(_running):
        prefetcher.stop()


def lower_priority() -> None:
    """Lower the calling thread's scheduling priority (Linux: threads have their own nice value)."""
    if sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)
        except OSError:
            pass  # not permitted here: run at the normal priority
