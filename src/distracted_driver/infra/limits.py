"""How large an image the REST API takes in AWS: Lambda's request limit, not the handler's.

API Gateway takes bodies up to 10 MiB, and ``lambda/handler.py`` refuses images over
SageMaker Runtime's 6,291,456 bytes. But the Lambda proxy integration hands the
function one JSON event holding the image base64 (4/3 larger) beside the request's
headers and context, and Lambda refuses a synchronous request over 6,291,456
bytes before the handler runs. ``largest_image`` finds the largest image whose
event still fits, for a given request's headers.
"""

from __future__ import annotations

import json

from distracted_driver.data.payload import LAMBDA_REQUEST_MAX_BYTES
from distracted_driver.gateway.events import Caller, build_proxy_event

# What curl sends with `-H "x-api-key: …" -H "Content-Type: image/jpeg" --data-binary @img.jpg`,
# plus what API Gateway adds (it passes CloudFront's and its own headers on to the function).
TYPICAL_HEADERS = {
    "Host": "a1b2c3d4e5.execute-api.us-east-1.amazonaws.com",
    "User-Agent": "curl/8.5.0",
    "Accept": "*/*",
    "Content-Type": "image/jpeg",
    "x-api-key": "Zq3ExampleKeyOfFortyCharacters0123456789",
    "CloudFront-Forwarded-Proto": "https",
    "CloudFront-Is-Desktop-Viewer": "true",
    "CloudFront-Is-Mobile-Viewer": "false",
    "CloudFront-Is-SmartTV-Viewer": "false",
    "CloudFront-Is-Tablet-Viewer": "false",
    "CloudFront-Viewer-ASN": "16509",
    "CloudFront-Viewer-Country": "DE",
    "Via": "2.0 0123456789abcdef0123456789abcdef.cloudfront.net (CloudFront)",
    "X-Amz-Cf-Id": "Qm9yZWRvbU9mQ2xvdWRGcm9udElkZW50aWZpZXJzMDEyMzQ1Njc4OQ==",
    "X-Amzn-Trace-Id": "Root=1-67a1b2c3-0123456789abcdef01234567",
    "X-Forwarded-For": "203.0.113.7, 130.176.0.1",
    "X-Forwarded-Port": "443",
    "X-Forwarded-Proto": "https",
}


def event_bytes(image_bytes: int, headers: dict | None = None) -> int:
    """Size of the proxy event (JSON) that carries an image of ``image_bytes``."""
    headers = dict(headers or TYPICAL_HEADERS)
    headers["Content-Length"] = str(image_bytes)
    caller = Caller(
        source_ip="203.0.113.7",
        user_agent=headers.get("User-Agent"),
        api_key=headers.get("x-api-key"),
        api_key_id="a1b2c3d4e5",
    )
    event = build_proxy_event(
        "POST",
        "/predict",
        "/predict",
        headers,
        {},
        b"\0" * image_bytes,
        "v1",
        caller,
        "c0ffee00-0000-4000-8000-000000000000",
    )
    return len(json.dumps(event))


def largest_image(headers: dict | None = None, limit: int = LAMBDA_REQUEST_MAX_BYTES) -> int:
    """The largest image (bytes) whose proxy event fits in Lambda's request limit."""
    low, high = 0, limit  # event_bytes grows with the image: bisect on it
    while low < high:
        middle = (low + high + 1) // 2
        if event_bytes(middle, headers) <= limit:
            low = middle
        else:
            high = middle - 1
    return low
