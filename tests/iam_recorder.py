"""pytest plugin (``-p iam_recorder``): record every AWS request our code makes, for the IAM coverage check.

Each botocore client gets a ``before-parameter-build`` handler (it fires for every
call, the Stubber's and moto's alike) that notes the service's signing name, the
operation, its parameters and the role whose code made it: the innermost frame of
ours on the stack decides (``lambda/handler.py`` runs as the predict Lambda,
``lambda/trigger.py`` as the trigger, the package as CodeBuild runs it). Calls made
by test code alone are not ours and are left out, as are the preflight's
workstation-only checks (``--build`` skips them in CodeBuild). The list is written
to ``$DD_IAM_RECORD`` at the end of the session.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import botocore.session

REPO = Path(__file__).resolve().parents[1]
ROLE_OF = (
    (str(REPO / "lambda" / "handler.py"), "predict-lambda"),
    (str(REPO / "lambda" / "trigger.py"), "trigger-lambda"),
    (str(REPO / "src" / "distracted_driver") + os.sep, "codebuild"),
)
WORKSTATION_ONLY = {("preflight.py", "source_credential"), ("preflight.py", "state")}
calls: list[dict] = []


def _role() -> str | None:
    frame = sys._getframe(2)
    while frame is not None:
        filename = frame.f_code.co_filename
        for prefix, role in ROLE_OF:
            if filename == prefix or filename.startswith(prefix):
                if (Path(filename).name, frame.f_code.co_name) in WORKSTATION_ONLY:
                    return None
                return role
        frame = frame.f_back
    return None


def _record(params, model, **_):
    role = _role()
    if role is None:
        return
    calls.append(
        {
            "role": role,
            "service": model.service_model.signing_name,
            "operation": model.name,
            "params": json.loads(json.dumps(params, default=lambda value: "<binary>")),
        }
    )


_create_client = botocore.session.Session.create_client


def _recording_client(self, *args, **kwargs):
    client = _create_client(self, *args, **kwargs)
    client.meta.events.register("before-parameter-build", _record)
    return client


def pytest_configure(config):
    botocore.session.Session.create_client = _recording_client


def pytest_sessionfinish(session, exitstatus):
    target = os.environ.get("DD_IAM_RECORD")
    if target:
        Path(target).write_text(json.dumps(calls))
