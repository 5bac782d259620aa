"""One persistent thread that owns the engine (and torch): jobs run there in the order given, results
come back to the caller's (GUI) thread through :meth:`Worker.deliver`.

Nothing here touches Slicer or Qt: MRML writes happen in the ``done`` callbacks, which
:meth:`deliver` calls on the thread that calls it (the GUI thread, from a timer).
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional


@dataclass
class Job:
    """``run()`` on the worker thread; then ``done(value)`` or ``failed(error)`` on the GUI thread."""

    name: str
    run: Callable[[], Any]
    done: Optional[Callable[[Any], None]] = None
    failed: Optional[Callable[[BaseException], None]] = None
    generation: int = 0
    """Set by :meth:`Worker.submit`: jobs of an older generation were discarded."""


class Worker:
    """A FIFO of jobs served by one daemon thread; a job submitted while another runs waits its turn."""

    def __init__(self):
        self._jobs: "queue.Queue[Optional[Job]]" = queue.Queue()
        self._finished: "queue.Queue[tuple[Job, bool, Any]]" = queue.Queue()
        self._pending = 0
        self._generation = 0
        self._lock = threading.Lock()
        self.running: Optional[str] = None
        """Name of the job on the worker thread now (None when idle)."""
        self._thread = threading.Thread(target=self._serve, name="KA2ERSegment worker", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._lock:
            self._pending += 1
            job.generation = self._generation
        self._jobs.put(job)

    def discard(self) -> None:
        """Forget every job submitted so far (the scene they were for is closing): those not started
        never run, and no callback of any of them is called; the one running now finishes."""
        with self._lock:
            self._generation += 1

    def _discarded(self, job: Job) -> bool:
        with self._lock:
            return job.generation != self._generation

    @property
    def pending(self) -> int:
        """Jobs submitted whose callbacks have not been delivered yet."""
        with self._lock:
            return self._pending

    def deliver(self) -> int:
        """Call the callbacks of finished jobs on this thread, in submission order; returns how many
        (discarded jobs have none)."""
        count = 0
        while True:
            try:
                job, ok, value = self._finished.get_nowait()
            except queue.Empty:
                return count
            with self._lock:
                self._pending -= 1
            if self._discarded(job):
                continue
            count += 1
            callback = job.done if ok else job.failed
            if callback is not None:
                callback(value)

    def wait(self, timeout: float = 60.0) -> None:
        """Block until every submitted job has finished and been delivered (tests, self-test)."""
        deadline = time.monotonic() + timeout
        while self.pending:
            self.deliver()
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker still busy with {self.running!r} after {timeout} s")
            time.sleep(0.002)

    def stop(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=10)

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if self._discarded(job):
                self._finished.put((job, False, None))
                continue
            self.running = job.name
            try:
                value, ok = job.run(), True
            except BaseException as error:  # reported to the GUI thread, never lost
                value, ok = error, False
            self.running = None
            self._finished.put((job, ok, value))
