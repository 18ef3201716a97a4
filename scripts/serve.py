#!/usr/bin/env python
"""Entry point of the serving container, as SageMaker hosting starts it: ``docker run <image> serve``.

SageMaker unpacks the model's ``model.tar.gz`` into ``/opt/ml/model`` and
sends ``/ping`` and ``/invocations`` to port 8080 (or ``SAGEMAKER_BIND_TO_PORT``)
from outside the container, so here, and only here, the server binds every
interface. Everything else is the model server's own command line
(``python -m distracted_driver.serve.server --help``); extra arguments pass
through, e.g. ``serve --max-batch-size 16``.

Environment: ``SM_MODEL_DIR`` overrides the model directory (default
``/opt/ml/model``), ``SAGEMAKER_BIND_TO_PORT`` the port.
"""

from __future__ import annotations

import os
import sys

from distracted_driver.serve import server

SAGEMAKER_MODEL_DIR = "/opt/ml/model"


def main(argv: list[str]) -> int:
    if argv and argv[0] == "serve":  # SageMaker passes the word "serve" as the container's argument
        argv = argv[1:]
    defaults = [
        "--model-dir",
        os.environ.get("SM_MODEL_DIR", SAGEMAKER_MODEL_DIR),
        "--host",
        "0.0.0.0",
        "--port",
        os.environ.get("SAGEMAKER_BIND_TO_PORT", str(server.DEFAULT_PORT)),
    ]
    return server.main(defaults + argv)  # later flags win, so passed-through ones override these


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
