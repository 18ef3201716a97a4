"""One call to the REST API, as curl would make it (stdlib only)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}


def predict_image(
    predict_url: str,
    api_key: str | None,
    image: str | Path | bytes,
    content_type: str | None = None,
    timeout_s: float = 30.0,
) -> tuple[int, dict]:
    """POST one image to ``.../predict``; (HTTP status, JSON answer) — errors are answers too."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        content_type = content_type or CONTENT_TYPES.get(path.suffix.lower(), "application/x-image")
        image = path.read_bytes()
    headers = {"Content-Type": content_type or "image/jpeg"}
    if api_key:
        headers["x-api-key"] = api_key
    request = urllib.request.Request(predict_url, data=image, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        body = error.read()
        try:
            return error.code, json.loads(body)
        except ValueError:
            return error.code, {"message": body.decode("utf-8", "replace")}
