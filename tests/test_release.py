"""Deploys on the real local stack: only gated models get traffic, and serving must answer what the gate scored.

Real processes on 127.0.0.1 (runtime daemon, model servers), real ONNX files, the real ``inv``
tasks (driven only through the command line, so that each test runs, and fails, on the code before
the gate scored models). Each bad model is one a real pipeline can produce: a model whose classes are rotated by one,
one whose softmax was left out, an artifact replaced under a gated name, and an artifact whose
``preprocess.json`` no longer matches what the model was scored with.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hosting_support import hosted_env
from model_fixtures import (
    IMAGENET_NORMALISATION,
    derived_artifact,
    memorizing_artifact,
    rotated_classes,
    softmax_removed,
)

from distracted_driver.data.channels import upload_channels
from distracted_driver.model.artifact import PREPROCESS_FILE, load_artifact
from distracted_driver.model.registry import Registry

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
INV = Path(sys.executable).with_name("inv")
LIES = {"log_loss": 0.001, "accuracy": 1.0}
SWAP = ("--strategy", "canary", "--canary-percent", "50", "--wait", "1", "--bake", "1")


@pytest.fixture
def stack(tmp_path, tiny_channels):
    """A local bucket holding the tiny channels, and the local hosting of the same root (stopped after)."""
    with hosted_env(tmp_path / "root") as hosted:
        upload_channels(hosted.storage, tiny_channels, hosted.settings.data_prefix)
        hosted.registry = Registry(hosted.storage, hosted.settings)
        yield hosted


def _inv(settings, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DD_ROOT": str(settings.root)}
    return subprocess.run([str(INV), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=240)


def _knowing(tmp_path, tiny_channels, version, sharpness=16.0, metrics=None):
    return memorizing_artifact(tmp_path / "models", version, tiny_channels / "validation", sharpness, metrics)


def _gate(settings, version: str) -> subprocess.CompletedProcess:
    return _inv(settings, "model.gate", "--candidate", version)


def _live_model(stack, tmp_path, tiny_channels, version="incumbent"):
    """A good model, gated and deployed (all at once): what serves before each test's swap."""
    artifact = _knowing(tmp_path, tiny_channels, version)
    stack.publish(artifact)
    gated = _gate(stack.settings, version)
    assert gated.returncode == 0, gated.stdout + gated.stderr
    deployed = _inv(stack.settings, "deploy.swap", "--model", version, "--strategy", "all-at-once", "--bake", "0")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    return artifact


def _serves_only(stack, version):
    status = stack.hosting.status()
    assert status.live_version == version and status.status == "InService"
    assert [i["model"] for i in status.instances] == [version]
    assert stack.registry.live()["job"] == version


def test_the_gate_rejects_rotated_and_softmax_free_models_and_the_swap_gives_them_no_traffic(
    stack, tmp_path, tiny_channels
):
    good = _live_model(stack, tmp_path, tiny_channels)
    live = good.version
    for version, broken, finding in (
        ("rotated", rotated_classes, "(accuracy 0.000)"),
        ("no-softmax", softmax_removed, "are not probabilities"),
    ):
        stack.publish(derived_artifact(good.directory, tmp_path / "models", version, model=broken, metrics=LIES))
        gated = _inv(stack.settings, "model.gate", "--candidate", version)
        assert gated.returncode == 1, gated.stdout + gated.stderr
        assert gated.stdout.startswith("gate REJECTED: ") and finding in gated.stdout, gated.stdout
        swapped = _inv(stack.settings, "deploy.swap", "--model", version, *SWAP)
        assert swapped.returncode == 3, swapped.stdout + swapped.stderr
        assert f"refused: the gate rejected {version} on the current validation set" in swapped.stderr
        _serves_only(stack, live)
    ungated = _inv(stack.settings, "deploy.swap", "--model", "incumbent", *SWAP)
    assert ungated.returncode == 0 and "unchanged" in ungated.stdout  # the live model needs no gate to stay


@pytest.mark.parametrize("change", ["rotated-weights", "imagenet-normalisation"])
def test_an_artifact_changed_after_the_gate_is_refused_and_forced_through_it_is_rolled_back(
    stack, tmp_path, tiny_channels, change
):
    live = _live_model(stack, tmp_path, tiny_channels).version
    candidate = _knowing(tmp_path, tiny_channels, "sharper", sharpness=32)
    stack.publish(candidate)
    assert _gate(stack.settings, "sharper").returncode == 0
    # The tar under the gated name is replaced: a wrong model, or the same weights with other preprocessing.
    if change == "rotated-weights":
        changed = derived_artifact(candidate, tmp_path / "changed", "sharper", model=rotated_classes)
    else:
        preprocessing = dataclasses.replace(load_artifact(candidate.directory).preprocessing, **IMAGENET_NORMALISATION)
        changed = derived_artifact(candidate, tmp_path / "changed", "sharper", preprocessing=preprocessing)
    stack.storage.put_file(changed.tar_path, stack.registry.artifact_key("sharper"))

    refused = _inv(stack.settings, "deploy.swap", "--model", "sharper", *SWAP)
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "is not the one the gate scored" in refused.stderr
    _serves_only(stack, live)

    forced = _inv(stack.settings, "deploy.swap", "--model", "sharper", "--force", *SWAP)
    assert forced.returncode == 1, forced.stdout + forced.stderr
    assert "rolled-back: endpoint distracted-driver, live model incumbent" in forced.stdout
    assert "serving differs from evaluation: " in forced.stdout
    _serves_only(stack, live)
    [record] = stack.registry.get("sharper")["forced_deploys"]
    assert "is not the one the gate scored" in record["refused"] and record["by"] == "inv deploy --force"


def test_a_served_copy_whose_preprocessing_drifted_is_rolled_back_by_the_smoke_test(stack, tmp_path, tiny_channels):
    live = _live_model(stack, tmp_path, tiny_channels).version
    stack.publish(_knowing(tmp_path, tiny_channels, "sharper", sharpness=32))
    assert _gate(stack.settings, "sharper").returncode == 0
    first = _inv(stack.settings, "deploy.swap", "--model", "sharper", *SWAP)
    assert first.returncode == 0, first.stdout + first.stderr
    back = stack.hosting.rollback()
    assert back.outcome == "rolled-back" and back.live_version == live

    # The endpoint's own unpacked copy drifts (an edit, a bad restore); the bucket and the gate record are intact.
    served_copy = stack.hosting.paths.model_dir("sharper") / PREPROCESS_FILE
    settings = json.loads(served_copy.read_text())
    served_copy.write_text(json.dumps({**settings, **IMAGENET_NORMALISATION}))
    again = _inv(stack.settings, "deploy.swap", "--model", "sharper", *SWAP)
    assert again.returncode == 1, again.stdout + again.stderr
    assert re.search(
        r"smoke test of sharper failed: serving differs from evaluation: \d+ of 20 smoke images "
        r"answered with probabilities up to [01]\.\d+ away from the gate's \(tolerance 0\.01\)",
        again.stdout,
    )
    assert "accuracy on the smoke images is 0.500 served, below the gate's 1.000" in again.stdout
    assert "rolled back to incumbent" in again.stdout
    _serves_only(stack, live)
    assert "forced_deploys" not in stack.registry.get("sharper")
    # The same copy, before it drifted, answered exactly what the gate computed.
    assert "smoke test: 20 smoke images answered as evaluated: largest probability difference 0 " in first.stdout


def test_a_trained_model_with_rotated_labels_is_rejected(trained_job, tmp_path):
    """The issue's case with a real trained network: the same weights, its ten classes rotated by one,
    claiming a near-perfect score, against the trained model as the live one."""
    import shutil

    from distracted_driver.config import Settings
    from distracted_driver.storage import open_storage

    settings = Settings(root=tmp_path / "root")  # a copy: the trained job's bucket is shared by other tests
    shutil.copytree(trained_job.settings.bucket_dir, settings.bucket_dir)
    registry = Registry(open_storage(settings), settings)
    registry.set_live(trained_job.job)
    artifact = registry.fetch_artifact(trained_job.job, tmp_path / "trained")
    derived_artifact(artifact.directory, tmp_path, "trained-rotated", model=rotated_classes, metrics=LIES).publish(
        registry.storage, settings
    )
    gated = _inv(settings, "model.gate", "--candidate", "trained-rotated", "--json")
    assert gated.returncode == 1, gated.stdout + gated.stderr
    decision = json.loads(gated.stdout)
    print(
        f"trained: log loss {decision['live_log_loss']:.4f} accuracy {decision['live_accuracy']:.3f}; rotated: "
        f"log loss {decision['candidate_log_loss']:.4f} accuracy {decision['candidate_accuracy']:.3f}"
    )
    assert not decision["passed"] and "worse than the tolerance" in decision["reason"]
    assert decision["candidate_log_loss"] > decision["live_log_loss"] + 0.5
    assert decision["candidate_accuracy"] < decision["live_accuracy"]
