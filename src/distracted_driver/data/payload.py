"""What a prediction request's body may be: a JPEG or PNG, no larger than AWS lets it be.

Standard library only: the Lambda handler imports this module, and
``infra.terraform.package_lambdas`` bundles it (with ``data/layout.py``) into
the handler's zip, so the handler, the model server, the local runtime and the
gateway share one definition.
"""

from __future__ import annotations

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# SageMaker Runtime's InvokeEndpoint refuses request bodies larger than this; the model
# server, the local runtime and the Lambda handler refuse them too, with the same limit.
INVOKE_ENDPOINT_MAX_BYTES = 6_291_456
# Lambda's limit on a synchronous invocation's request: the whole proxy event as JSON, the
# image base64 inside it. Above it AWS answers 413 {"message": "Request Too Long"} and the
# handler never runs (docs/aws.md, "How large an image").
LAMBDA_REQUEST_MAX_BYTES = 6_291_456


def image_content_type(payload: bytes) -> str | None:
    """``image/jpeg`` or ``image/png`` by the file signature; None for anything else."""
    if payload.startswith(JPEG_MAGIC):
        return "image/jpeg"
    if payload.startswith(PNG_MAGIC):
        return "image/png"
    return None
