"""Waiting in tests: for a condition, with a deadline, never for a fixed time.

A fixed sleep is either too short on a busy machine (a flaky test) or too long
everywhere else (a slow one). ``wait_until`` polls a condition and returns as
soon as it holds; past the deadline, or as soon as the process the wait
depends on has exited, it fails with what it was waiting for.
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
from collections.abc import Callable
from typing import IO, TypeVar

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T],
    timeout_s: float,
    *,
    what: str = "the condition",
    interval_s: float = 0.05,
    process: subprocess.Popen | None = None,
    details: Callable[[], str] | None = None,
) -> T:
    """Poll ``condition`` until it returns something truthy, and return that.

    ``process``: fail at once if it exits first. ``details``: more to say on failure (a log's text).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if process is not None and process.poll() is not None:
            _fail(f"{what}: the process exited (code {process.returncode}) first", details)
        if time.monotonic() >= deadline:
            _fail(f"timed out after {timeout_s:g} s waiting for {what}", details)
        time.sleep(interval_s)


async def wait_until_async(
    condition: Callable[[], T], timeout_s: float, *, what: str = "the condition", interval_s: float = 0.02
) -> T:
    """``wait_until`` for a coroutine: the event loop keeps running between polls.

    ``condition`` runs on a thread, so it may block (an HTTP request to a server on this loop).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = await asyncio.to_thread(condition)
        if value:
            return value
        if time.monotonic() >= deadline:
            _fail(f"timed out after {timeout_s:g} s waiting for {what}", None)
        await asyncio.sleep(interval_s)


def _fail(message: str, details: Callable[[], str] | None) -> None:
    raise AssertionError(message + (f"\n{details()}" if details else ""))


class OutputLines:
    """A process's text output, read line by line on a thread, so a test can wait for a line while it runs."""

    def __init__(self, stream: IO[str]):
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append(line)

    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, fragment: str, timeout_s: float, process: subprocess.Popen | None = None) -> str:
        """The first line containing ``fragment``, once it is written."""
        return wait_until(
            lambda: next((line for line in self.lines if fragment in line), None),
            timeout_s,
            what=f"a line with {fragment!r}",
            process=process,
            details=self.text,
        )

    def until_closed(self, timeout_s: float) -> str:
        """Everything, once the process closed its output."""
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), f"the output was still open after {timeout_s:g} s"
        return self.text()
