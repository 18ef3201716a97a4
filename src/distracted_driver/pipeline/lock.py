"""The pipeline lock: one object in the bucket, created only if absent.

``Storage.create_exclusive`` is an exclusive create locally (hard link) and a
conditional PUT (``If-None-Match: *``) on S3, so of two runs that start at
once exactly one gets the lock. The object says who holds it (host, pid and
the process's start time, run id, when it started and when it last made
progress). A lock is stale, and taken over with a warning, when

- its holder ran on this host and that process is gone (or the pid now
  belongs to another process, told apart by its start time), or
- it made no progress for ``max_age_seconds`` (a holder on another host
  cannot be checked directly; a run refreshes the lock after every stage).

Taking over re-reads the lock right before deleting it, so a holder that
refreshed in between keeps it; what remains is the short window between that
read and the delete, which the storage interface cannot close (S3 has no
conditional delete on an object's content).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass

from distracted_driver.config import Settings
from distracted_driver.storage import KeyNotFound, Storage
from distracted_driver.system import process_gone, process_identity

log = logging.getLogger(__name__)

DEFAULT_MAX_AGE_SECONDS = 6 * 3600  # longer than any stage runs between two refreshes


@dataclass(frozen=True)
class LockHolder:
    run_id: str
    host: str
    pid: int
    pid_started: float  # the holder process's start time: tells a reused pid apart
    started: float
    refreshed: float

    @classmethod
    def current(cls, run_id: str) -> LockHolder:
        now = time.time()
        return cls(run_id, **process_identity(), started=now, refreshed=now)

    def describe(self) -> str:
        age = time.time() - self.started
        return f"run {self.run_id} (pid {self.pid} on {self.host}, started {age:.0f} s ago)"

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> LockHolder:
        value = json.loads(data)
        return cls(**{name: value[name] for name in cls.__dataclass_fields__})


class LockBusy(RuntimeError):
    def __init__(self, holder: LockHolder | None):
        self.holder = holder
        who = holder.describe() if holder else "another run"
        super().__init__(f"the pipeline lock is held by {who}")


def stale_reason(holder: LockHolder | None, max_age_seconds: float, now: float | None = None) -> str:
    """Why the lock may be taken over, or "" while its holder may still be working."""
    if holder is None:
        return "the lock object is unreadable"
    now = time.time() if now is None else now
    gone = process_gone(holder.host, holder.pid, holder.pid_started)
    if gone:
        return f"its holder's {gone}"
    idle = now - holder.refreshed
    if idle > max_age_seconds:
        return f"no progress for {idle:.0f} s (max age {max_age_seconds:.0f} s)"
    return ""


class PipelineLock:
    """``with PipelineLock(storage, settings, run_id):`` — raises LockBusy when held by a live run."""

    def __init__(
        self, storage: Storage, settings: Settings, run_id: str, max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS
    ):
        self.storage = storage
        self.key = f"{settings.pipeline_prefix.strip('/')}/lock"
        self.run_id = run_id
        self.max_age_seconds = max_age_seconds
        self.holder: LockHolder | None = None

    def read(self) -> tuple[bytes, LockHolder | None] | None:
        """The raw lock object and its parsed holder (None if unreadable); None when unlocked."""
        try:
            data = self.storage.get_bytes(self.key)
        except KeyNotFound:
            return None
        try:
            return data, LockHolder.from_bytes(data)
        except (ValueError, KeyError, TypeError):
            return data, None

    def acquire(self) -> LockHolder:
        mine = LockHolder.current(self.run_id)
        for _ in range(3):
            if self.storage.create_exclusive(self.key, mine.to_bytes()):
                self.holder = mine
                return mine
            current = self.read()
            if current is None:  # released between our create and our read: try again
                continue
            data, holder = current
            reason = stale_reason(holder, self.max_age_seconds)
            if not reason:
                raise LockBusy(holder)
            again = self.read()
            if again is None or again[0] != data:  # refreshed or replaced meanwhile
                continue
            who = holder.describe() if holder else "an unknown holder"
            log.warning("taking over a stale pipeline lock of %s: %s", who, reason)
            self.storage.delete(self.key)
        current = self.read()
        raise LockBusy(current[1] if current else None)

    def _is_mine(self) -> bool:
        current = self.read()
        if current is None or current[1] is None or self.holder is None:
            return False
        theirs, mine = current[1], self.holder
        return (theirs.host, theirs.pid, theirs.started) == (mine.host, mine.pid, mine.started)

    def refresh(self, run_id: str | None = None) -> None:
        """Record progress, so a long run on another host is not taken for stale (and name a resumed run)."""
        if self.holder is None:
            return
        if not self._is_mine():
            log.warning("the pipeline lock of run %s was taken over by another run", self.run_id)
            return
        self.run_id = run_id or self.run_id
        self.holder = LockHolder(**{**asdict(self.holder), "refreshed": time.time(), "run_id": self.run_id})
        self.storage.put_bytes(self.key, self.holder.to_bytes())

    def release(self) -> None:
        if self.holder is None:
            return
        if self._is_mine():
            self.storage.delete(self.key)
        else:
            log.warning("not releasing the pipeline lock: another run took it over from run %s", self.run_id)
        self.holder = None

    def __enter__(self) -> PipelineLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
