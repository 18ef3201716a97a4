"""Gateway stage: the local API Gateway in front of the endpoint, running the real Lambda handler.

``app`` is the HTTP server (routing, API keys, throttle, proxy event, handler
in a thread pool), ``events`` builds what API Gateway hands a Lambda, ``keys``
holds API keys and the usage plan, ``openapi`` the API's document and docs
page, ``daemon`` starts and stops it in the background, ``client`` makes one
call the way curl would.
"""

from distracted_driver.gateway.client import predict_image
from distracted_driver.gateway.daemon import (
    GatewayError,
    create_api_key,
    default_api_key,
    gateway_status,
    start_gateway,
    started_lines,
    status_lines,
    stop_gateway,
)
from distracted_driver.gateway.keys import UsagePlan

__all__ = [
    "GatewayError",
    "UsagePlan",
    "create_api_key",
    "default_api_key",
    "gateway_status",
    "predict_image",
    "start_gateway",
    "started_lines",
    "status_lines",
    "stop_gateway",
]
