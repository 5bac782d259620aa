"""One model worker per device: every session's model work runs on its single thread, in arrival
order, so the HTTP event loop never blocks on the model and sessions never run concurrently."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable


class WorkerBusy(RuntimeError):
    """More requests are waiting for the model than the server queues."""


class ModelWorker:
    def __init__(self, max_queue: int):
        self.max_queue = max_queue
        self.pending = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ka2er-model")

    async def run(self, work: Callable[[], Any]) -> Any:
        """Run ``work`` on the model thread and wait for it without blocking the event loop."""
        if self.pending >= self.max_queue:
            raise WorkerBusy(f"{self.pending} requests already wait for the model")
        self.pending += 1
        try:
            return await asyncio.wrap_future(self._executor.submit(work))
        finally:
            self.pending -= 1

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
