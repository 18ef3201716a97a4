"""Registry of model versions in the bucket and the live pointer (the gate is tested in test_gate.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distracted_driver.config import Settings
from distracted_driver.model.artifact import load_artifact
from distracted_driver.model.registry import Registry, RegistryError
from distracted_driver.storage import open_storage

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


def _inv(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DD_ROOT": str(root)}
    inv = Path(sys.executable).with_name("inv")
    return subprocess.run([str(inv), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_list_task_marks_the_live_model(tmp_path, make_artifact):
    settings = Settings(root=tmp_path)
    registry = Registry(open_storage(settings), settings)
    _register(registry, make_artifact, "reg-task-live", 0.2)
    _register(registry, make_artifact, "reg-task-other", 0.9)
    registry.set_live("reg-task-live")
    listed = _inv(tmp_path, "model.list", "--json")
    versions = json.loads(listed.stdout)
    assert [(v["job"], v["live"]) for v in versions] == [("reg-task-live", True), ("reg-task-other", False)]
