"""What the ``inv infra.*`` tasks do besides running terraform and docker: every check of terraform/, the
preparation of a plan/apply/destroy, and the serving image's push."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import boto3

from distracted_driver.config import Settings
from distracted_driver.hashing import code_version
from distracted_driver.infra import iam, provider_schema
from distracted_driver.infra.check import run_checkov, wiring_findings
from distracted_driver.infra.core import TERRAFORM_VENV, binary_checks, library_checks
from distracted_driver.infra.ecr import image_exists, split_image
from distracted_driver.infra.terraform import (
    endpoint_exists as lookup_endpoint,
)
from distracted_driver.infra.terraform import (
    endpoint_of,
    image_tag,
    init_command,
    package_lambdas,
    serving_repository,
    terraform_dir,
)

CHECKOV = Path(".venvs/checkov/bin/checkov")  # its own virtual environment: it pins an old boto3


def _make(settings: Settings, target: str) -> None:
    """A Makefile target (of the repository one runs inv in) that builds a tool's environment on first use."""
    subprocess.run(["make", target], check=True)


def check_terraform(
    settings: Settings, with_checkov: bool = True, verbose: bool = False, say: Callable[[str], None] = print
) -> bool:
    """Wiring against the code, Terraform core, the AWS provider's schema, IAM against AWS's action catalogue,
    then checkov; each finding that failed (every one with ``verbose``) and a summary per check. True if all pass."""
    root = terraform_dir(settings)

    def show(findings) -> None:
        for finding in findings:
            if verbose or not finding.ok:
                say(str(finding))

    report = wiring_findings(root, settings.root)
    show(report.findings)
    say(f"wiring: {len(report.findings) - len(report.failures)} of {len(report.findings)} checks passed")
    passed = report.ok
    python = settings.root / TERRAFORM_VENV / "bin" / "python"
    if not python.exists():
        _make(settings, "terraform-env")
    envs = sorted(p.stem for p in (root / "envs").glob("*.tfvars"))
    for core in (library_checks(root, python), binary_checks(root, envs)):
        say(str(core))
        passed = passed and core.ok
    if not (settings.root / provider_schema.SCHEMA_DIR / ".installed").exists():
        _make(settings, "provider-schema")
    for schema in provider_schema.schemas(settings.root / provider_schema.SCHEMA_DIR):
        results = provider_schema.findings(root, schema)
        show(results)
        say(
            f"provider schema aws {schema['provider_version']}: {sum(f.ok for f in results)} of {len(results)} "
            "blocks fit"
        )
        passed = passed and all(f.ok for f in results)
    for env in envs:  # the catalogue, and what the services do as each role (tests/test_iam.py adds our calls)
        report = iam.check(root, root / "envs" / f"{env}.tfvars", [])
        show(report.findings)
        say(f"iam [{env}]: {report.summary()}")
        passed = passed and report.ok
    if with_checkov:
        if not CHECKOV.exists():
            _make(settings, "checkov-env")
        result = run_checkov(root, str(CHECKOV))
        say(str(result))
        passed = passed and result.ok
    return passed


def prepare_terraform(
    settings: Settings, env: str, endpoint_exists: str | bool | None, say: Callable[[str], None] = print
) -> tuple[bool, str | None]:
    """Before a plan, apply or destroy: package the Lambdas; whether the endpoint exists (given, else looked
    up with boto3: autoscaling is registered only then); and ``terraform init`` to run first, if any."""
    root = terraform_dir(settings)
    packages = package_lambdas(root)
    say(f"packaged {', '.join(str(p.relative_to(settings.root)) for p in packages.values())}")
    init = None if (Path(root) / ".terraform").is_dir() else init_command(settings)
    if endpoint_exists not in (None, ""):
        return str(endpoint_exists).lower() in ("1", "true", "yes"), init
    region, endpoint = endpoint_of(settings, env)
    exists = lookup_endpoint(region, endpoint)
    say(
        f"endpoint {endpoint} in {region} {'exists' if exists else 'does not exist yet'}: "
        f"autoscaling module {'on' if exists else 'off until the first deploy'}"
    )
    return exists, init


def push_image_commands(settings: Settings, tag: str | None = None) -> tuple[str, list[str]]:
    """The serving image's URI (tagged with the code version unless ``tag``), and the shell commands that
    build and push it; none when ECR has it already (tags are immutable)."""
    image = f"{serving_repository(settings)}:{tag or image_tag(code_version())}"
    registry, name, tag_ = split_image(image)
    ecr = boto3.session.Session(region_name=settings.region).client("ecr")
    if image_exists(ecr, name, tag_):
        return image, []
    return image, [
        f"aws ecr get-login-password --region {settings.region} | docker login --username AWS --password-stdin {registry}",
        f"docker build -f docker/serve.Dockerfile -t {image} .",
        f"docker push {image}",
    ]
