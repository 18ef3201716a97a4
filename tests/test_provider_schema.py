"""Every resource and data block against the AWS provider's schema as cdktf publishes it on PyPI (generated from
the provider), for a 5.x and a 6.x release: both ends of what versions.tf admits. ``make provider-schema``
extracts them into .venvs/provider-schema/."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

from distracted_driver.infra.hcl import parse_file
from distracted_driver.infra.provider_schema import SCHEMA_DIR, findings, schemas

REPO = Path(__file__).resolve().parents[1]
TERRAFORM = REPO / "terraform"

pytestmark = pytest.mark.slow  # two provider schemas against every block, and the copies: seconds


@pytest.fixture(scope="module")
def provider_schemas() -> list[dict]:
    if not (REPO / SCHEMA_DIR / ".installed").exists():
        subprocess.run(["make", "provider-schema"], cwd=REPO, check=True, timeout=1200)
    found = schemas(REPO / SCHEMA_DIR)
    assert found, "make provider-schema extracted nothing"
    return found


def _admitted() -> SpecifierSet:
    versions = parse_file(TERRAFORM / "versions.tf")["terraform"][0]["required_providers"][0]["aws"]["version"]
    return SpecifierSet(re.sub(r"\s+", "", versions))


def test_the_schemas_bracket_what_versions_tf_admits(provider_schemas):
    admitted = _admitted()
    versions = sorted(schema["provider_version"] for schema in provider_schemas)
    assert all(version in admitted for version in versions), (versions, str(admitted))
    assert {version.split(".")[0] for version in versions} == {"5", "6"}
    assert all(len(schema["resource"]) > 1000 and len(schema["data"]) > 400 for schema in provider_schemas)


def test_every_block_is_in_the_provider_schema(provider_schemas):
    for schema in provider_schemas:
        results = findings(TERRAFORM, schema)
        assert len(results) > 70
        assert all(f.ok for f in results), "\n".join(str(f) for f in results if not f.ok)


@pytest.mark.parametrize(
    "path, old, new, words",
    [
        (
            "modules/api/main.tf",
            "reserved_concurrent_executions = var.reserved_concurrency",
            "reserved_concurrency = var.reserved_concurrency",
            "unknown argument 'reserved_concurrency'",
        ),
        (
            "modules/ecr/main.tf",
            "  repository = aws_ecr_repository.this.name\n",
            "",
            "required argument 'repository' is missing",
        ),
        (
            "modules/codebuild/main.tf",
            '    filter {\n      type    = "EVENT"',
            '    filters {\n      type    = "EVENT"',
            "unknown argument 'filters'",
        ),
        (
            "modules/storage/main.tf",
            "days_after_initiation = abort_incomplete_multipart_upload.value",
            "days_after_initiations = abort_incomplete_multipart_upload.value",
            "unknown argument 'days_after_initiations'",
        ),
        (
            "modules/ecr/main.tf",
            'data "aws_ecr_lifecycle_policy_document"',
            'data "aws_ecr_lifecycle_document"',
            "the provider has no data aws_ecr_lifecycle_document",
        ),
    ],
)
def test_a_block_the_provider_would_refuse_is_named(provider_schemas, tmp_path, path, old, new, words):
    copy = tmp_path / "terraform"
    shutil.copytree(TERRAFORM, copy, ignore=shutil.ignore_patterns(".terraform"))
    target = copy / path
    text = target.read_text()
    assert old in text
    target.write_text(text.replace(old, new, 1))
    for schema in provider_schemas:
        failures = [str(f) for f in findings(copy, schema) if not f.ok]
        assert any(words in failure and path in failure for failure in failures), failures
