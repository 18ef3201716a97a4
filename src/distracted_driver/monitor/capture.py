"""Reading data capture: SageMaker's JSON Lines files, or the local runtime's, back into records.

The format, and the writer that makes the local files, are ``serve.capture``'s
(the endpoint's side); this is the monitoring side, which reads what an
endpoint captured through the ``Storage`` interface, from S3 or the local
bucket alike. The reader decodes BASE64, JSON and CSV alike, so a capture made
without a ``CaptureContentTypeHeader`` (everything BASE64) reads the same; it
takes any ``*.jsonl`` name in an hour folder. ``CaptureRecord.refused`` tells
the model server's refusal of a bad input from an answer.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from distracted_driver.serve.capture import BASE64, CSV, JSON, as_utc, media_type
from distracted_driver.storage.base import Storage

log = logging.getLogger(__name__)


class CaptureFormatError(ValueError):
    """A line that is not a capture record."""


@dataclass(frozen=True)
class CaptureRecord:
    """One captured invocation, decoded."""

    event_id: str
    inference_time: datetime  # UTC
    endpoint: str
    variant: str
    input_content_type: str | None
    input_bytes: bytes | None  # the request body as the client sent it (decoded from BASE64); None if not captured
    output_content_type: str | None
    output_text: str | None  # the response body as text; None if not captured
    output: object = None  # the response parsed, when it is JSON (the probabilities, or a refusal's error)
    key: str = ""  # the object it was read from
    inference_id: str | None = None  # eventMetadata.inferenceId, when the caller gave one

    @property
    def refused(self) -> bool:
        """The model server refused the input (its JSON error ``{"error", "message"}`` is the output)."""
        return isinstance(self.output, dict) and "error" in self.output and "probabilities" not in self.output


def _decode(part: dict, what: str) -> bytes:
    data, how = part.get("data"), part.get("encoding")
    if how == BASE64:
        try:
            return base64.b64decode(data or "", validate=True)
        except (binascii.Error, ValueError):
            raise CaptureFormatError(f"{what}.data is not base64") from None
    if how in (JSON, CSV):
        if isinstance(data, str):
            return data.encode("utf-8")
        if how == JSON:  # tolerate JSON stored as a value rather than as text
            return json.dumps(data).encode("utf-8")
    raise CaptureFormatError(f"{what}: unknown encoding {how!r}")


def _is_json(content_type: str) -> bool:
    media = media_type(content_type)
    return media == "application/json" or media.endswith("+json")


def parse_capture_line(line: bytes | str, endpoint: str, variant: str, key: str = "") -> CaptureRecord:
    """One JSON line → a ``CaptureRecord``; raises ``CaptureFormatError`` when it is not one."""
    try:
        value = json.loads(line)
        capture, metadata = value["captureData"], value["eventMetadata"]
        when = as_utc(datetime.fromisoformat(metadata["inferenceTime"].replace("Z", "+00:00")))
        event_id = str(metadata["eventId"])
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise CaptureFormatError(f"not a capture record ({type(error).__name__}: {error})") from None
    if not isinstance(capture, dict):
        raise CaptureFormatError("captureData is not an object")
    request, answer = capture.get("endpointInput"), capture.get("endpointOutput")
    input_bytes = _decode(request, "endpointInput") if isinstance(request, dict) else None
    output_text, output = None, None
    if isinstance(answer, dict):
        output_text = _decode(answer, "endpointOutput").decode("utf-8", errors="replace")
        if answer.get("encoding") == JSON or _is_json(answer.get("observedContentType") or ""):
            try:
                output = json.loads(output_text)
            except ValueError:
                output = None
    return CaptureRecord(
        event_id=event_id,
        inference_time=when,
        endpoint=endpoint,
        variant=variant,
        input_content_type=request.get("observedContentType") if isinstance(request, dict) else None,
        input_bytes=input_bytes,
        output_content_type=answer.get("observedContentType") if isinstance(answer, dict) else None,
        output_text=output_text,
        output=output,
        key=key,
        inference_id=metadata.get("inferenceId"),
    )


def _key_pattern(prefix: str, endpoint: str) -> re.Pattern:
    head = "/".join(filter(None, (prefix.strip("/"), endpoint)))
    return re.compile(re.escape(head) + r"/(?P<variant>[^/]+)/(?P<hour>\d{4}/\d{2}/\d{2}/\d{2})/[^/]+\.jsonl$")


def capture_keys(
    storage: Storage, prefix: str, endpoint: str, since: datetime | None = None, variant: str | None = None
) -> list[tuple[str, str]]:
    """``(key, variant)`` of every capture file of the endpoint, in time order per variant; with ``since``,
    only the hour folders from ``since``'s hour on."""
    pattern = _key_pattern(prefix, endpoint)
    head = "/".join(filter(None, (prefix.strip("/"), endpoint, variant))) + "/"
    first_hour = as_utc(since).strftime("%Y/%m/%d/%H") if since is not None else ""
    found = []
    for key in storage.list_keys(head):
        match = pattern.match(key)
        if match and match["hour"] >= first_hour and (variant is None or match["variant"] == variant):
            found.append((key, match["variant"]))
    return found


def iter_capture_records(
    storage: Storage,
    prefix: str,
    endpoint: str,
    since: datetime | None = None,
    variant: str | None = None,
    *,
    skipped: list[str] | None = None,
) -> Iterator[CaptureRecord]:
    """Every captured invocation of ``endpoint`` under ``prefix`` (S3 or the local bucket), file by file.

    ``since`` (a UTC or aware datetime) keeps events at or after it; ``variant``
    keeps one production variant. A line that is not a capture record is
    skipped and, when ``skipped`` is given, described there (``key:line: why``).
    """
    since = as_utc(since) if since is not None else None
    for key, found_variant in capture_keys(storage, prefix, endpoint, since, variant):
        for number, line in enumerate(storage.get_bytes(key).splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = parse_capture_line(line, endpoint, found_variant, key)
            except CaptureFormatError as error:
                log.warning("%s:%d: skipped: %s", key, number, error)
                if skipped is not None:
                    skipped.append(f"{key}:{number}: {error}")
                continue
            if since is None or record.inference_time >= since:
                yield record
