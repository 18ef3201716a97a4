"""API keys and the usage plan's throttle, as API Gateway applies them before the Lambda.

Keys live in one JSON file in the state directory (readable by its owner
only); the running gateway notices new keys without a restart. A presented
key is compared with every stored one by ``hmac.compare_digest``, so the time
a refusal takes says nothing about how much of a key was right. The throttle
is a token bucket per key: ``rate`` requests per second on average, ``burst``
at once, 429 past them (API Gateway's usage-plan throttle).
"""

from __future__ import annotations

import hmac
import json
import secrets
import string
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from distracted_driver.fsutil import atomic_path

KEY_ALPHABET = string.ascii_lowercase + string.digits


@dataclass(frozen=True)
class UsagePlan:
    """The usage plan's throttle and whether a key is required at all."""

    rate: float = 200.0  # requests per second per key, steady state
    burst: int = 400  # requests per key at once
    require_key: bool = True

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError("the usage plan needs rate > 0 and burst >= 1")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, value: dict) -> UsagePlan:
        return cls(**{k: v for k, v in value.items() if k in cls.__dataclass_fields__})


class KeyStore:
    """API keys in a JSON file: ``{"keys": [{"id", "name", "value", "created"}]}``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._keys: list[dict] = []
        self._mtime: float | None = None
        self._checked = 0.0
        self._lock = threading.Lock()

    def create(self, name: str = "default") -> dict:
        """A new key, saved at once; its value is shown to whoever asked for it."""
        record = {
            "id": "".join(secrets.choice(KEY_ALPHABET) for _ in range(10)),
            "name": name,
            "value": secrets.token_urlsafe(30),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        with self._lock:
            keys = self._read()
            keys.append(record)
            self._write(keys)
        return record

    def list(self) -> list[dict]:
        return self._read()

    def first(self) -> dict | None:
        keys = self._read()
        return keys[0] if keys else None

    def lookup(self, value: str | None) -> dict | None:
        """The key record for a presented value, or None; re-reads the file when it changed."""
        if not value:
            return None
        self._refresh()
        presented = value.encode("utf-8", "surrogateescape")
        found = None
        for key in self._keys:  # no early exit: every key is compared, whichever matches
            if hmac.compare_digest(key["value"].encode("utf-8", "surrogateescape"), presented):
                found = key
        return found

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < 1.0 and self._mtime is not None:
            return
        self._checked = now
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            self._keys, self._mtime = [], 0.0
            return
        if mtime != self._mtime:
            self._keys = self._read()
            self._mtime = mtime

    def _read(self) -> list[dict]:
        try:
            return list(json.loads(self.path.read_text())["keys"])
        except FileNotFoundError:
            return []

    def _write(self, keys: list[dict]) -> None:
        with atomic_path(self.path, mode=0o600) as tmp:  # the keys are secrets
            tmp.write_text(json.dumps({"keys": keys}, indent=2) + "\n")


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; each request takes one."""

    def __init__(self, rate: float, burst: int, clock=time.monotonic):
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class Throttle:
    """One token bucket per API key (requests without a key share one)."""

    def __init__(self, plan: UsagePlan, clock=time.monotonic):
        self.plan = plan
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def allow(self, key_id: str | None) -> bool:
        bucket = self._buckets.get(key_id or "")
        if bucket is None:
            bucket = self._buckets[key_id or ""] = TokenBucket(self.plan.rate, self.plan.burst, self._clock)
        return bucket.take()
