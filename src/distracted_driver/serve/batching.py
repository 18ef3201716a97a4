"""Dynamic batching: concurrent requests share one ONNX Runtime run.

Requests hand in preprocessed inputs; one collector task gathers them into a
batch of at most ``max_batch_size``, waiting at most ``max_delay_s`` after the
oldest one arrived, and runs the model on an inference thread (ONNX Runtime
releases the GIL and spreads a run over its intra-op threads). Up to
``concurrency`` batches run at once, on as many threads sharing the session's
intra-op pool: one run alone has every core, and when a second runs beside
it, each core stays busy through the other run's per-operator waits (with
int8 kernels each operator is short, and those waits cost more than the
run's own work on a 2-core machine). Once every slot is taken, the next batch
fills up, so the busier the server, the larger its batches.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    tensor: np.ndarray
    future: asyncio.Future
    arrived: float


def _stack_and_run(predict: Callable[[np.ndarray], np.ndarray], tensors: list[np.ndarray]) -> np.ndarray:
    return predict(np.stack(tensors))


def _fail(batch: list[_Pending], error: BaseException) -> None:
    for item in batch:
        if not item.future.done():
            item.future.set_exception(error)


class DynamicBatcher:
    def __init__(
        self,
        predict: Callable[[np.ndarray], np.ndarray],
        max_batch_size: int = 8,
        max_delay_s: float = 0.005,
        on_batch: Callable[[int, float], None] | None = None,
        concurrency: int = 1,
    ):
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.predict = predict
        self.max_batch_size = max_batch_size
        self.max_delay_s = max(0.0, max_delay_s)
        self.on_batch = on_batch  # called with (batch size, seconds of the run)
        self.concurrency = concurrency
        self._pending: collections.deque[_Pending] = collections.deque()
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(concurrency, thread_name_prefix="inference")
        self._task: asyncio.Task | None = None
        self._slots: asyncio.Semaphore | None = None
        self._running: set[asyncio.Task] = set()

    def start(self) -> None:
        self._slots = asyncio.Semaphore(self.concurrency)
        self._task = asyncio.get_running_loop().create_task(self._collect(), name="dynamic-batcher")

    async def submit(self, tensor: np.ndarray) -> np.ndarray:
        """One preprocessed input ``[3, S, S]`` → its row of probabilities."""
        if self._task is None or self._task.done():
            raise RuntimeError("the batcher is not running")
        future = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(tensor, future, time.monotonic()))
        self._arrived.set()
        return await future

    async def run_now(self, batch: np.ndarray) -> np.ndarray:
        """Run a whole batch on the inference thread, outside the queue (warm-up)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.predict, batch)

    async def _next_batch(self) -> list[_Pending]:
        while not self._pending:
            self._arrived.clear()
            await self._arrived.wait()
        deadline = self._pending[0].arrived + self.max_delay_s
        while len(self._pending) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                break
        count = min(self.max_batch_size, len(self._pending))
        batch = [self._pending.popleft() for _ in range(count)]
        return [item for item in batch if not item.future.done()]  # drop callers that went away

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._slots.acquire()  # a free inference thread first, then the batch: it fills meanwhile
            try:
                batch = await self._next_batch()
            except BaseException:
                self._slots.release()
                raise
            if not batch:
                self._slots.release()
                continue
            run = loop.create_task(self._run(batch))
            self._running.add(run)
            run.add_done_callback(self._running.discard)

    async def _run(self, batch: list[_Pending]) -> None:
        started = time.monotonic()
        try:
            probabilities = await asyncio.get_running_loop().run_in_executor(
                self._executor, _stack_and_run, self.predict, [item.tensor for item in batch]
            )
        except asyncio.CancelledError:
            _fail(batch, RuntimeError("the server is shutting down"))
            raise
        except Exception as error:  # a model fault fails this batch's requests, not the server
            log.exception("inference failed for a batch of %d", len(batch))
            _fail(batch, error)
            return
        finally:
            self._slots.release()
        if self.on_batch:
            self.on_batch(len(batch), time.monotonic() - started)
        for item, row in zip(batch, probabilities):
            if not item.future.done():
                item.future.set_result(row)

    async def close(self) -> None:
        """Stop collecting; requests still waiting or running get an error rather than hanging."""
        for task in [self._task, *self._running]:
            if task is not None:
                task.cancel()
        for task in [self._task, *list(self._running)]:
            if task is not None:
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        _fail(list(self._pending), RuntimeError("the server is shutting down"))
        self._pending.clear()
        await asyncio.to_thread(self._executor.shutdown, wait=True)  # the loop serves others meanwhile
