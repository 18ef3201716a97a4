"""Registry of model versions in the bucket, the live pointer, and the quality gate's decisions."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distracted_driver.config import Settings
from distracted_driver.storage import open_storage
from distracted_driver.train.artifact import load_artifact
from distracted_driver.train.evaluate import evaluate_artifact
from distracted_driver.train.registry import Registry, RegistryError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def registry(tmp_path):
    settings = Settings(root=tmp_path)
    return Registry(open_storage(settings), settings)


def _register(registry, make_artifact, version, log_loss, data="data-v1", seed=0):
    built = make_artifact(version, seed=seed, metrics={"log_loss": log_loss, "accuracy": 0.9})
    built.publish(registry.storage)
    artifact = load_artifact(built.directory)
    artifact = dataclasses.replace(artifact, provenance={**artifact.provenance, "data_manifest_sha256": data})
    return registry.register(version, artifact)


def test_versions_are_listed_oldest_first_and_resolved(registry, make_artifact):
    _register(registry, make_artifact, "dd-20260101-000000-aaaa", 0.4)
    _register(registry, make_artifact, "dd-20260102-000000-bbbb", 0.3)
    jobs = [v["job"] for v in registry.list_versions()]
    assert jobs == ["dd-20260101-000000-aaaa", "dd-20260102-000000-bbbb"]
    entry = registry.get("latest")
    assert entry["job"] == "dd-20260102-000000-bbbb"
    assert entry["metrics"]["log_loss"] == 0.3
    assert entry["artifact_key"] == "models/dd-20260102-000000-bbbb/output/model.tar.gz"
    assert entry["artifact_sha256"] == registry.storage.checksum(entry["artifact_key"])
    with pytest.raises(RegistryError, match="no model is live"):
        registry.get("live")
    registry.set_live("dd-20260101-000000-aaaa", endpoint="e")
    assert registry.live()["job"] == registry.get("live")["job"] == "dd-20260101-000000-aaaa"
    assert registry.live()["endpoint"] == "e"


def test_unknown_versions_are_refused(registry, make_artifact):
    with pytest.raises(RegistryError, match="no model version is registered"):
        registry.get("latest")
    with pytest.raises(RegistryError, match="no registered model version"):
        registry.set_live("dd-20990101-000000-ffff")
    built = make_artifact("reg-unpublished")
    with pytest.raises(RegistryError, match="does not exist"):
        registry.register("reg-unpublished", load_artifact(built.directory))


def test_first_model_must_clearly_beat_the_uniform_guess(registry, make_artifact):
    _register(registry, make_artifact, "reg-good", 0.3)
    _register(registry, make_artifact, "reg-poor", 0.6 * math.log(10))
    passed = registry.gate("reg-good")
    assert passed.passed and passed.live_log_loss is None and "ln 10" in passed.reason
    rejected = registry.gate("reg-poor")
    assert not rejected.passed
    assert "not below 1.1513" in rejected.reason
    assert registry.gate("reg-poor", baseline_fraction=0.7).passed


def test_candidate_is_judged_against_the_live_model_with_a_tolerance(registry, make_artifact):
    _register(registry, make_artifact, "reg-live", 0.30)
    _register(registry, make_artifact, "reg-slightly-worse", 0.33)
    _register(registry, make_artifact, "reg-much-worse", 0.50)
    _register(registry, make_artifact, "reg-better", 0.20)
    registry.set_live("reg-live")
    assert registry.gate("reg-better").passed
    assert registry.gate("reg-slightly-worse", tolerance=0.05).passed
    assert not registry.gate("reg-slightly-worse", tolerance=0.01).passed
    decision = registry.gate("reg-much-worse")
    assert not decision.passed
    assert (decision.candidate_log_loss, decision.live_log_loss, decision.live) == (0.5, 0.3, "reg-live")
    assert "worse than the tolerance" in decision.reason
    assert registry.gate("reg-live").passed


def test_live_model_is_re_evaluated_on_the_candidates_data(tmp_path, tiny_channels, make_artifact):
    """Log losses on different validation sets do not compare: the gate scores the live model on the new one."""
    from train_support import bucket_with_channels

    settings = bucket_with_channels(tmp_path, tiny_channels)
    registry = Registry(open_storage(settings), settings)
    current = registry.storage.checksum("data/manifest.json")
    _register(registry, make_artifact, "reg-old-data", 0.01, data="an-older-manifest", seed=7)
    _register(registry, make_artifact, "reg-new-data", 1.0, data=current, seed=8)
    registry.set_live("reg-old-data")

    decision = registry.gate("reg-new-data")
    expected = evaluate_artifact(load_artifact(make_artifact("reg-old-data", seed=7, metrics={
        "log_loss": 0.01, "accuracy": 0.9}).directory), tiny_channels / "validation", progress=False)["log_loss"]
    assert decision.live_log_loss == pytest.approx(expected)
    assert "re-evaluated" in decision.reason
    assert decision.passed == (1.0 <= expected + 0.05)
    assert current in registry.get("reg-old-data")["evaluations"]


def _inv(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DD_ROOT": str(root)}
    inv = Path(sys.executable).with_name("inv")
    return subprocess.run([str(inv), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_gate_task_exits_non_zero_with_the_reason(tmp_path, make_artifact):
    settings = Settings(root=tmp_path)
    registry = Registry(open_storage(settings), settings)
    _register(registry, make_artifact, "reg-task-live", 0.2)
    _register(registry, make_artifact, "reg-task-worse", 0.9)
    registry.set_live("reg-task-live")

    rejected = _inv(tmp_path, "model.gate", "--candidate", "reg-task-worse")
    assert rejected.returncode == 1
    assert "REJECTED" in rejected.stdout and "reg-task-live" in rejected.stdout
    passed = _inv(tmp_path, "model.gate", "--candidate", "reg-task-worse", "--tolerance", "1.0")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    listed = _inv(tmp_path, "model.list", "--json")
    versions = json.loads(listed.stdout)
    assert [(v["job"], v["live"]) for v in versions] == [("reg-task-live", True), ("reg-task-worse", False)]
