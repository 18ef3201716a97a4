"""Code versions as content hashes of the sources that shape a stage's output.

The git commit would retrain on every commit, even one that only touches the
README or the load test. Instead each stage hashes the files whose content can
change what it produces: the converter hashes the split and RecordIO code, the
trainer everything under ``train/`` that runs inside the training job, the
artifact, evaluation and precision code of ``model/`` it runs too, the shared
image and RecordIO code and ``scripts/train.py``. Bookkeeping around the
job (the registry, the gate, the local runner, the SageMaker launcher) is left out: a
change there does not change a model.
"""

from __future__ import annotations

from pathlib import Path

from distracted_driver.hashing import sha256_file, sha256_json

PACKAGE = Path(__file__).resolve().parents[1]
REPOSITORY = PACKAGE.parents[1]  # src/distracted_driver -> the checkout (editable install)

CONVERT_SOURCES = ("data/split.py", "data/convert.py", "data/recordio.py", "data/layout.py")
# The job also packs, evaluates and picks the precision of its own export: model/ minus the registry and cache.
TRAINING_SOURCES = (
    "train/*.py",
    "model/artifact.py",
    "model/precision.py",
    "model/evaluate.py",
    "model/inference.py",
    "data/channel.py",
    "data/imaging.py",
    "data/payload.py",
    "data/recordio.py",
    "data/layout.py",
)
TRAINING_EXCLUDED = ("train/gate.py", "train/runner.py", "train/sagemaker.py", "train/source_dir.py")
TRAINING_SCRIPT = REPOSITORY / "scripts" / "train.py"


def _sources(patterns: tuple[str, ...], excluded: tuple[str, ...] = ()) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for pattern in patterns:
        for path in sorted(PACKAGE.glob(pattern)):
            name = path.relative_to(PACKAGE).as_posix()
            if name not in excluded:
                found[name] = path
    return found


def _version(files: dict[str, Path]) -> str:
    return sha256_json({name: sha256_file(path) for name, path in sorted(files.items())})


def convert_code_version() -> str:
    return _version(_sources(CONVERT_SOURCES))


def training_code_version() -> str:
    files = _sources(TRAINING_SOURCES, TRAINING_EXCLUDED)
    if TRAINING_SCRIPT.is_file():
        files["scripts/train.py"] = TRAINING_SCRIPT
    return _version(files)
