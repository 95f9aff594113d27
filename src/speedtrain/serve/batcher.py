"""Micro-batching: the texts of concurrent requests grouped into model calls, one at a time, off the event loop.

    batcher = MicroBatcher(infer, max_batch_size=64, max_wait_s=0.0, max_queue=2048)
    batcher.start()                              # in the running event loop
    results = await batcher.submit(["a text"])   # raises Overloaded when max_queue texts are waiting
    await batcher.close()                        # finishes what is queued
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)


class Overloaded(Exception):
    """The batcher's queue is full."""


class MicroBatcher:
    """Groups the texts of concurrent requests into model calls, run one at a time in a worker thread.

    ``infer(texts) -> list`` gets at most ``max_batch_size`` texts (more only when a single request brings more)
    and returns one result per text.
    """

    def __init__(self, infer, max_batch_size: int, max_wait_s: float, max_queue: int, on_batch=None):
        self.infer, self.max_batch_size, self.max_wait_s, self.max_queue = infer, max_batch_size, max_wait_s, max_queue
        self.on_batch = on_batch or (lambda size, queued: None)
        self.pending: deque[tuple[list[str], asyncio.Future]] = deque()
        self.queued = 0  # texts in self.pending
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="speedtrain-model")
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def submit(self, texts: list[str]) -> asyncio.Future:
        """A future for the results of ``texts``; raises :class:`Overloaded` when the queue is full."""
        if self._closing:
            raise Overloaded("shutting down")
        if self.queued and self.queued + len(texts) > self.max_queue:
            raise Overloaded(f"overloaded: {self.queued} texts are waiting for the model (--max-queue "
                             f"{self.max_queue})")
        future = asyncio.get_running_loop().create_future()
        self.pending.append((texts, future))
        self.queued += len(texts)
        self._wakeup.set()
        return future

    async def close(self) -> None:
        """Finish what is queued, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        self.executor.shutdown(wait=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.pending:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                if self.max_wait_s and self.queued < self.max_batch_size and not self._closing:
                    await asyncio.sleep(self.max_wait_s)  # the model was idle: let concurrent requests join
                continue
            batch, texts = [], []
            while self.pending and (not texts or len(texts) + len(self.pending[0][0]) <= self.max_batch_size):
                item = self.pending.popleft()
                batch.append(item)
                texts.extend(item[0])
            self.queued -= len(texts)
            self.on_batch(len(texts), self.queued)
            try:
                results = await loop.run_in_executor(self.executor, self.infer, texts)
            except Exception as err:  # a model failure fails these requests (500), not the server
                log.exception("model call failed for a batch of %d texts", len(texts))
                for _, future in batch:
                    if not future.done():
                        future.set_exception(err)
                continue
            at = 0
            for item_texts, future in batch:
                if not future.done():  # a client that went away cancelled its future
                    future.set_result(results[at:at + len(item_texts)])
                at += len(item_texts)
