"""Data capture in SageMaker's own layout and record shape: the format, the endpoint's configuration, the writer.

SageMaker writes what an endpoint with a ``DataCaptureConfig`` sees as JSON
Lines under the configured ``DestinationS3Uri``; the local runtime writes the
same files into the local bucket with ``CaptureWriter``, and
``monitor.capture.iter_capture_records`` reads either through the ``Storage``
interface.

Where the field names come from (checked against AWS's documentation):

- "Capture data from real-time endpoint", section *View Captured Data*
  (https://docs.aws.amazon.com/sagemaker/latest/dg/model-monitor-data-capture-endpoint.html;
  source: github.com/awsdocs/amazon-sagemaker-developer-guide, ``doc_source/model-monitor-data-capture.md``):
  the path is ``s3://<destination>/{endpoint-name}/{variant-name}/yyyy/mm/dd/hh/filename.jsonl``
  (the hour the invocation occurred, UTC), and each line is one event::

      {"captureData": {"endpointInput":  {"observedContentType", "mode": "INPUT",  "data", "encoding"},
                       "endpointOutput": {"observedContentType", "mode": "OUTPUT", "data", "encoding"}},
       "eventMetadata": {"eventId", "inferenceTime": "2022-02-14T17:25:49Z"},
       "eventVersion": "0"}

- The ``DataCaptureConfig`` API reference
  (https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_DataCaptureConfig.html):
  ``EnableCapture``, ``InitialSamplingPercentage`` (0..100), ``DestinationS3Uri``,
  ``KmsKeyId``, ``CaptureOptions`` (``CaptureMode`` ``Input`` / ``Output``) and
  ``CaptureContentTypeHeader``; and ``CaptureContentTypeHeader``
  (https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_CaptureContentTypeHeader.html):
  content types listed in ``JsonContentTypes`` are captured as JSON, those in
  ``CsvContentTypes`` as CSV, and everything else is base64-encoded.

The documentation names the file only ``filename.jsonl``; real capture buckets
hold ``MM-SS-mmm-<uuid>.jsonl`` inside the hour folder (minute, second and
millisecond of the file's first event, then a UUID), which is what the writer
uses. The reader takes any ``*.jsonl`` name.

Our choice of encoding: the endpoint config lists ``application/json`` in
``JsonContentTypes``, so the answer (the model server's JSON list of
probabilities) is captured with ``encoding: JSON`` and ``data`` holding the
JSON text as a string, as in the documentation's CSV example; images (``image/jpeg``,
``image/png``, ``application/x-image``) are in no list, so they are
``BASE64``. A content type matches a list on its media type, parameters
(``; charset=utf-8``) aside. The reader decodes BASE64, JSON and CSV alike, so
a capture made without the header (everything BASE64) reads the same.

Locally, the router captures every invocation the model server answered
(2xx, and its 4xx refusal of a bad input, whose JSON error is the output), and
``eventId`` is the ``x-amzn-RequestId`` it answered with. ``CaptureRecord.refused``
tells a refusal from an answer.


This module uses nothing above the storage layer, so the local runtime
(hosting) writes with it and the reader (``monitor.capture``) decodes with its
constants: the format has one home.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from distracted_driver.config import Settings, parse_percent
from distracted_driver.storage.base import Storage

log = logging.getLogger(__name__)

MiB = 1024 * 1024
EVENT_VERSION = "0"
INPUT, OUTPUT = "INPUT", "OUTPUT"  # the record's "mode"
BASE64, JSON, CSV = "BASE64", "JSON", "CSV"  # the record's "encoding"
CAPTURE_MODES = ("Input", "Output")  # DataCaptureConfig.CaptureOptions[].CaptureMode
JSON_CONTENT_TYPES = ("application/json",)  # our CaptureContentTypeHeader.JsonContentTypes
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # eventMetadata.inferenceTime, as documented
DEFAULT_PREFIX = Settings.capture_prefix  # the settings' default, "capture"


# --- where files go --------------------------------------------------------------------------


def hour_prefix(prefix: str, endpoint: str, variant: str, when: datetime) -> str:
    """``<prefix>/<endpoint>/<variant>/yyyy/mm/dd/hh/``: the folder of the hour ``when`` falls in (UTC)."""
    when = as_utc(when)
    return "/".join(filter(None, (prefix.strip("/"), endpoint, variant, when.strftime("%Y/%m/%d/%H")))) + "/"


def file_name(first: datetime) -> str:
    """``MM-SS-mmm-<uuid>.jsonl``, named by the first event's minute, second and millisecond."""
    first = as_utc(first)
    return f"{first:%M-%S}-{first.microsecond // 1000:03d}-{uuid.uuid4()}.jsonl"


def as_utc(when: datetime) -> datetime:
    """``when`` in UTC; a naive datetime is taken to be UTC already."""
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def media_type(content_type: str) -> str:
    """``application/json; charset=utf-8`` → ``application/json``."""
    return content_type.split(";")[0].strip().lower()


# --- one record ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaptureEncoding:
    """``CaptureContentTypeHeader``: which content types are captured as JSON or CSV text (the rest: BASE64)."""

    json_content_types: tuple[str, ...] = JSON_CONTENT_TYPES
    csv_content_types: tuple[str, ...] = ()

    def encoding_of(self, content_type: str) -> str:
        media = media_type(content_type)
        if media in (t.lower() for t in self.json_content_types):
            return JSON
        if media in (t.lower() for t in self.csv_content_types):
            return CSV
        return BASE64

    def encode(self, body: bytes, content_type: str) -> tuple[str, str]:
        """``(data, encoding)`` for a payload; text that is not UTF-8 falls back to BASE64."""
        encoding = self.encoding_of(content_type)
        if encoding != BASE64:
            try:
                return body.decode("utf-8"), encoding
            except UnicodeDecodeError:
                pass
        return base64.b64encode(body).decode("ascii"), BASE64


@dataclass(frozen=True)
class Invocation:
    """One request and its answer, as the router hands them to the writer."""

    endpoint: str
    variant: str
    event_id: str
    time: datetime
    input_content_type: str
    input_body: bytes
    output_content_type: str
    output_body: bytes

    @property
    def size(self) -> int:
        return len(self.input_body) + len(self.output_body)


def capture_line(
    invocation: Invocation,
    encoding: CaptureEncoding = CaptureEncoding(),
    capture_input: bool = True,
    capture_output: bool = True,
) -> bytes:
    """The JSON line SageMaker writes for one invocation (keys in the documented order)."""
    capture = {}
    if capture_input:
        data, how = encoding.encode(invocation.input_body, invocation.input_content_type)
        capture["endpointInput"] = {
            "observedContentType": invocation.input_content_type,
            "mode": INPUT,
            "data": data,
            "encoding": how,
        }
    if capture_output:
        data, how = encoding.encode(invocation.output_body, invocation.output_content_type)
        capture["endpointOutput"] = {
            "observedContentType": invocation.output_content_type,
            "mode": OUTPUT,
            "data": data,
            "encoding": how,
        }
    record = {
        "captureData": capture,
        "eventMetadata": {
            "eventId": invocation.event_id,
            "inferenceTime": as_utc(invocation.time).strftime(TIME_FORMAT),
        },
        "eventVersion": EVENT_VERSION,
    }
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


# --- the local runtime's configuration ---------------------------------------------------------


@dataclass(frozen=True)
class CaptureLimits:
    """How the writer stays off the request path, and how big and how late its files get."""

    queue_records: int = 1024  # invocations waiting for the writer; past this, new ones are dropped
    queue_bytes: int = 64 * MiB  # their bodies, at most
    max_file_bytes: int = 16 * MiB  # a file is written (rotated) when it reaches this size...
    flush_seconds: float = 2.0  # ...or when its first record has waited this long, or its hour is over

    def __post_init__(self) -> None:
        if min(self.queue_records, self.queue_bytes, self.max_file_bytes) < 1 or self.flush_seconds <= 0:
            raise ValueError("capture limits must be positive")


@dataclass(frozen=True)
class CaptureConfig:
    """An endpoint's ``DataCaptureConfig``, as the local runtime keeps it (and as SageMaker is asked for it)."""

    sampling_percent: int
    destination: str  # the local bucket directory, or s3://bucket
    prefix: str = DEFAULT_PREFIX
    kms_key_id: str = ""
    capture_input: bool = True
    capture_output: bool = True
    encoding: CaptureEncoding = CaptureEncoding()
    limits: CaptureLimits = CaptureLimits()

    def __post_init__(self) -> None:
        percent = parse_percent(self.sampling_percent, "sampling_percent")
        if percent is None:
            raise ValueError("sampling_percent is required")
        object.__setattr__(self, "sampling_percent", percent)
        if not (self.capture_input or self.capture_output):
            raise ValueError("capture needs Input, Output or both")

    @property
    def enabled(self) -> bool:
        return self.sampling_percent > 0

    @property
    def destination_uri(self) -> str:
        """Where the files land: ``DestinationS3Uri``, or the local bucket's folder as a file URI."""
        if self.destination.startswith("s3://"):
            return f"{self.destination.rstrip('/')}/{self.prefix.strip('/')}"
        return (Path(self.destination) / self.prefix.strip("/")).as_uri()

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, value: dict) -> CaptureConfig:
        value = dict(value)
        encoding = value.pop("encoding", None) or {}
        limits = value.pop("limits", None) or {}
        try:
            return cls(
                encoding=CaptureEncoding(**{k: tuple(v) for k, v in encoding.items()}),
                limits=CaptureLimits(**limits),
                **value,
            )
        except TypeError as error:
            raise ValueError(f"invalid capture config: {error}") from None

    def sagemaker_request(self) -> dict:
        """The ``DataCaptureConfig`` of CreateEndpointConfig for this configuration."""
        modes = [mode for mode, on in zip(CAPTURE_MODES, (self.capture_input, self.capture_output)) if on]
        request = {
            "EnableCapture": True,
            "InitialSamplingPercentage": self.sampling_percent,
            "DestinationS3Uri": self.destination_uri,
            "CaptureOptions": [{"CaptureMode": mode} for mode in modes],
        }
        if self.kms_key_id:
            request["KmsKeyId"] = self.kms_key_id
        header = {}
        if self.encoding.json_content_types:
            header["JsonContentTypes"] = list(self.encoding.json_content_types)
        if self.encoding.csv_content_types:
            header["CsvContentTypes"] = list(self.encoding.csv_content_types)
        if header:
            request["CaptureContentTypeHeader"] = header
        return request

    def with_percent(self, percent: int) -> CaptureConfig:
        return replace(self, sampling_percent=percent)


# --- writing -------------------------------------------------------------------------------------


@dataclass
class CaptureStats:
    """A writer's counts since it started."""

    accepted: int = 0  # taken into the queue
    dropped: int = 0  # refused because the queue was full (or the writer was closing)
    written: int = 0  # in a file
    lost: int = 0  # accepted but never written: a failed write, or still queued when a close gave up
    files: int = 0

    @property
    def queued(self) -> int:
        """Accepted and not yet in a file (queued or in a file being filled): what a kill would lose."""
        return self.accepted - self.written - self.lost

    def to_json(self) -> dict:
        return {**asdict(self), "queued": self.queued}


@dataclass
class _Batch:
    """The lines of one file being filled: one endpoint, variant and hour."""

    first: datetime
    opened: float = field(default_factory=time.monotonic)
    lines: list[bytes] = field(default_factory=list)
    size: int = 0

    def add(self, line: bytes) -> None:
        self.lines.append(line)
        self.size += len(line)


class CaptureWriter:
    """Writes invocations into the bucket as SageMaker does, from its own thread.

    ``offer`` never blocks: it puts the invocation in a bounded queue, or drops
    and counts it when the queue is full. The thread encodes what is queued and
    fills one file per (endpoint, variant, hour); a file is written when it
    reaches ``max_file_bytes``, when its first record is ``flush_seconds`` old,
    or when its hour is over, with ``Storage.put_bytes`` (locally: a temporary
    name, then a rename), so no reader ever sees half a file. ``close`` writes
    what is left; a process killed outright loses what was queued (``queued``).
    """

    def __init__(self, storage: Storage, config: CaptureConfig, name: str = "capture-writer"):
        self.storage = storage
        self.config = config
        self.limits = config.limits
        self._stats = CaptureStats()
        self._queue: list[Invocation] = []
        self._queued_bytes = 0
        self._closing = False
        self._condition = threading.Condition()
        self._batches: dict[tuple[str, str, datetime], _Batch] = {}  # the writer thread's own
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # --- the request side ---------------------------------------------------------------------

    def offer(self, invocation: Invocation) -> bool:
        """Queue the invocation for writing; False (and counted as dropped) when the queue is full."""
        with self._condition:
            if (
                self._closing
                or len(self._queue) >= self.limits.queue_records
                or self._queued_bytes + invocation.size > self.limits.queue_bytes
            ):
                self._stats.dropped += 1
                return False
            self._queue.append(invocation)
            self._queued_bytes += invocation.size
            self._stats.accepted += 1
            if len(self._queue) == 1:
                self._condition.notify()
            return True

    def stats(self) -> CaptureStats:
        with self._condition:
            return replace(self._stats)

    def close(self, timeout_s: float = 30.0) -> CaptureStats:
        """Stop taking invocations, write every queued one, and say what could not be written."""
        with self._condition:
            self._closing = True
            self._condition.notify()
        self._thread.join(timeout_s)
        with self._condition:
            if self._thread.is_alive():  # a write hangs (a dead file system): what is left is lost
                self._stats.lost += self._stats.queued
            return replace(self._stats)

    # --- the writer thread ----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._queue and not self._closing:
                    wait = self._next_flush_in()
                    if wait is not None and wait <= 0:
                        break
                    self._condition.wait(wait)
                taken, self._queue, self._queued_bytes = self._queue, [], 0
                closing = self._closing
            for invocation in taken:
                self._add(invocation)
            self._flush(everything=closing)
            if closing:
                with self._condition:
                    if not self._queue:
                        return

    def _next_flush_in(self) -> float | None:
        if not self._batches:
            return None
        oldest = min(batch.opened for batch in self._batches.values())
        return oldest + self.limits.flush_seconds - time.monotonic()

    def _add(self, invocation: Invocation) -> None:
        try:
            line = capture_line(invocation, self.config.encoding, self.config.capture_input, self.config.capture_output)
        except Exception:  # noqa: BLE001 - a record we cannot encode must not stop the writer
            log.exception("capture: could not encode event %s", invocation.event_id)
            self._count(lost=1)
            return
        hour = as_utc(invocation.time).replace(minute=0, second=0, microsecond=0)
        where = (invocation.endpoint, invocation.variant, hour)
        batch = self._batches.get(where)
        if batch is not None and batch.lines and batch.size + len(line) > self.limits.max_file_bytes:
            self._write(where, self._batches.pop(where))
            batch = None
        if batch is None:
            batch = self._batches[where] = _Batch(first=as_utc(invocation.time))
        batch.add(line)

    def _flush(self, everything: bool = False) -> None:
        now, this_hour = time.monotonic(), datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        for where, batch in list(self._batches.items()):
            if (
                everything
                or batch.size >= self.limits.max_file_bytes
                or where[2] < this_hour
                or now - batch.opened >= self.limits.flush_seconds
            ):
                self._write(where, self._batches.pop(where))

    def _write(self, where: tuple[str, str, datetime], batch: _Batch) -> None:
        endpoint, variant, hour = where
        key = hour_prefix(self.config.prefix, endpoint, variant, hour) + file_name(batch.first)
        try:
            self.storage.put_bytes(key, b"".join(batch.lines))
        except Exception as error:  # noqa: BLE001 - a full disk or a lost bucket: count, say, go on
            log.error("capture: %d records lost: writing %s failed: %s", len(batch.lines), key, error)
            self._count(lost=len(batch.lines))
            return
        self._count(written=len(batch.lines), files=1)

    def _count(self, written: int = 0, lost: int = 0, files: int = 0) -> None:
        with self._condition:
            self._stats.written += written
            self._stats.lost += lost
            self._stats.files += files
