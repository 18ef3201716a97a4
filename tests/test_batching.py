"""The dynamic batcher runs up to ``concurrency`` batches at once, and a shutdown leaves nobody waiting."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from waiting import wait_until_async

from distracted_driver.serve.batching import DynamicBatcher


def _rows(batch: np.ndarray) -> np.ndarray:
    return np.repeat(batch.reshape(len(batch), -1)[:, :1], 10, axis=1)


def test_two_batches_run_at_once_when_allowed():
    """Each run waits at a barrier for a second one: only two runs in flight together get past it."""
    barrier = threading.Barrier(2, timeout=2)

    def predict(batch):
        barrier.wait()
        return _rows(batch)

    async def scenario(concurrency):
        batcher = DynamicBatcher(predict, max_batch_size=1, max_delay_s=0.0, concurrency=concurrency)
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit(np.full((1,), float(i), np.float32)) for i in range(2)))
        finally:
            await batcher.close()

    rows = asyncio.run(scenario(2))
    assert [row[0] for row in rows] == [0.0, 1.0]
    barrier.reset()
    with pytest.raises(threading.BrokenBarrierError):  # one at a time: the first run waits for a second in vain
        asyncio.run(scenario(1))


def test_closing_fails_the_batches_still_running():
    release, running, timed_out = threading.Event(), [], []

    def predict(batch):
        running.append(len(batch))
        if not release.wait(10):
            timed_out.append(len(batch))
        return _rows(batch)

    async def scenario():
        batcher = DynamicBatcher(predict, max_batch_size=2, max_delay_s=0.0, concurrency=2)
        batcher.start()
        waiting = [asyncio.ensure_future(batcher.submit(np.zeros(1, np.float32))) for _ in range(3)]
        await wait_until_async(lambda: len(running) == 2, timeout_s=10, what="both inference threads busy")
        closing = asyncio.ensure_future(batcher.close())
        # The requests fail while their batches still run; the loop goes on meanwhile.
        await wait_until_async(
            lambda: all(future.done() for future in waiting), timeout_s=10, what="the requests to fail"
        )
        release.set()
        await closing
        return await asyncio.gather(*waiting, return_exceptions=True)

    outcomes = asyncio.run(scenario())
    assert all(isinstance(o, RuntimeError) and "shutting down" in str(o) for o in outcomes), outcomes
    assert timed_out == []  # the closing batcher did not block the loop until its runs ended


def test_concurrency_must_be_positive():
    with pytest.raises(ValueError, match="concurrency"):
        DynamicBatcher(_rows, concurrency=0)
