"""The terraform CLI's command lines, and its outputs turned into the pipeline's settings.

The invoke tasks run these commands with ``c.run``; this module only builds them
and reads what they print, so both are testable without a terraform binary.

``terraform output -json`` holds ``pipeline_settings`` (a map of ``DD_*`` values,
the same map CodeBuild reads from SSM); ``write_env_file`` puts it in
``.state/aws.env``, which ``Settings.from_env(backend="aws")`` reads.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import sys
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import boto3
from botocore.exceptions import ClientError

from distracted_driver.config import Settings, read_env_file
from distracted_driver.fsutil import write_bytes_atomic
from distracted_driver.infra.hcl import Configuration

TERRAFORM_DIR = "terraform"
ENV_FILE = "aws.env"
# Values go into a file that `source` and Settings both read: no quoting needed, none allowed.
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9_@%+=:,./-]*$")
_NAME = re.compile(r"^DD_[A-Z0-9_]+$")


class OutputsError(ValueError):
    """``terraform output -json`` lacks what the pipeline needs, or holds an unsafe value."""


def terraform_dir(settings: Settings) -> Path:
    return settings.root / TERRAFORM_DIR


def env_file(settings: Settings) -> Path:
    return Path(settings.state_dir) / ENV_FILE


def var_file(settings: Settings, env: str) -> Path:
    path = terraform_dir(settings) / "envs" / f"{env}.tfvars"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.tfvars"))
        raise ValueError(f"no {path.relative_to(settings.root)}; environments: {', '.join(known)}")
    return path


def command(
    settings: Settings,
    action: str,
    env: str,
    *,
    endpoint_exists: bool | None = None,
    auto_approve: bool = False,
    plan_file: str | None = None,
) -> str:
    """``terraform -chdir=terraform <action> -var-file=envs/<env>.tfvars …`` as one shell string."""
    if action not in ("plan", "apply", "destroy"):
        raise ValueError(f"unknown terraform action {action!r}")
    args = [
        "terraform",
        f"-chdir={terraform_dir(settings)}",
        action,
        "-input=false",
        f"-var-file={var_file(settings, env).relative_to(terraform_dir(settings))}",
    ]
    if endpoint_exists is not None:
        args.append(f"-var=endpoint_exists={'true' if endpoint_exists else 'false'}")
    if plan_file and action == "plan":
        args.append(f"-out={plan_file}")
    if auto_approve and action in ("apply", "destroy"):
        args.append("-auto-approve")
    return shlex.join(args)


def init_command(settings: Settings) -> str:
    return shlex.join(["terraform", f"-chdir={terraform_dir(settings)}", "init", "-input=false"])


def output_command(settings: Settings) -> str:
    return shlex.join(["terraform", f"-chdir={terraform_dir(settings)}", "output", "-json"])


def endpoint_of(settings: Settings, env: str) -> tuple[str, str]:
    """(region, endpoint name) that ``envs/<env>.tfvars`` configures, read statically."""
    config = Configuration(terraform_dir(settings), var_file(settings, env))
    return config.variable("region"), config.variable("endpoint_name")


def endpoint_exists(region: str, endpoint: str, client=None) -> bool:
    """Does the deploy task's endpoint exist yet? (The autoscaling module waits for it.)"""
    client = client or boto3.client("sagemaker", region_name=region)
    try:
        client.describe_endpoint(EndpointName=endpoint)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") == "ValidationException":
            return False
        raise
    return True


def settings_from_outputs(outputs: dict) -> dict[str, str]:
    """``terraform output -json`` (parsed) → the ``DD_*`` settings, validated."""
    try:
        values = outputs["pipeline_settings"]["value"]
    except (KeyError, TypeError):
        raise OutputsError("terraform outputs lack pipeline_settings: run `inv infra.apply` first") from None
    if not isinstance(values, dict) or not values:
        raise OutputsError("pipeline_settings is empty")
    settings = {}
    for name, value in sorted(values.items()):
        text = str(value).lower() if isinstance(value, bool) else str(value)
        if not _NAME.match(name):
            raise OutputsError(f"setting {name!r} is not named DD_<FIELD>")
        if not _SAFE_VALUE.match(text):
            raise OutputsError(f"setting {name} has characters an env file cannot hold unquoted: {text!r}")
        settings[name] = text
    for required in ("DD_BUCKET", "DD_REGION", "DD_ROLE_ARN", "DD_ENDPOINT_NAME"):
        if not settings.get(required):
            raise OutputsError(f"pipeline_settings lacks {required}")
    return settings


def write_env_file(path: str | Path, values: dict[str, str], keep: dict[str, str] | None = None) -> Path:
    """Write ``NAME=value`` lines atomically; ``keep`` entries (e.g. DD_SERVING_IMAGE) survive a refresh."""
    merged = {**(keep or {}), **values}
    lines = ["# Written by `inv infra.outputs` from `terraform output -json`; read by Settings for --backend aws."]
    lines += [f"{name}={value}" for name, value in sorted(merged.items())]
    write_bytes_atomic(path, ("\n".join(lines) + "\n").encode())
    return Path(path)


def refresh_env_file(settings: Settings, outputs: dict) -> tuple[Path, dict[str, str]]:
    """Turn the outputs into ``.state/aws.env``, keeping the serving image an earlier push recorded."""
    values = settings_from_outputs(outputs)
    path = env_file(settings)
    previous = read_env_file(path)
    keep = {k: v for k, v in previous.items() if k == "DD_SERVING_IMAGE"}
    return write_env_file(path, values, keep), values


def record_serving_image(settings: Settings, image: str) -> Path:
    """Remember the image ``infra.push-image`` pushed, for the deploy task's models."""
    if not _SAFE_VALUE.match(image):
        raise OutputsError(f"unsafe image reference {image!r}")
    path = env_file(settings)
    values = read_env_file(path)
    values["DD_SERVING_IMAGE"] = image
    return write_env_file(path, values)


def serving_repository(settings: Settings) -> str:
    """The ECR repository of the serving image (Terraform output, via SSM in CI or .state/aws.env)."""
    repository = os.environ.get("DD_SERVING_IMAGE_REPOSITORY") or read_env_file(env_file(settings)).get(
        "DD_SERVING_IMAGE_REPOSITORY"
    )
    if not repository:
        raise OutputsError("no DD_SERVING_IMAGE_REPOSITORY: run `inv infra.apply` (or `inv infra.outputs`) first")
    return repository


LAMBDAS = ("handler", "trigger")  # lambda/<name>.py, each zipped with the package modules it imports
BUILD_DIR = ".build"
PACKAGE_DIR = Path(__file__).resolve().parents[1]
# What a Lambda's Python runtime has besides the standard library.
LAMBDA_RUNTIME_PROVIDES = frozenset({"boto3", "botocore"})


class LambdaPackageError(ValueError):
    """A Lambda source imports something its zip cannot carry."""


def _imported_names(source: Path) -> set[str]:
    """Absolute module names a file imports (``from a.b import c`` counts ``a.b`` and ``a.b.c``)."""
    names = set()
    for node in ast.walk(ast.parse(source.read_bytes(), str(source))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _package_file(module: str) -> Path | None:
    """The file of a ``distracted_driver`` module, or None when the name is not a module (an attribute)."""
    path = PACKAGE_DIR.parent.joinpath(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def bundled_modules(source: Path) -> dict[str, Path]:
    """Zip member name → file, for the package modules ``source`` imports, theirs, and their packages'
    ``__init__``; raises ``LambdaPackageError`` when any of them imports what the Lambda runtime lacks."""
    bundled: dict[str, Path] = {}
    pending = [source]
    while pending:
        current = pending.pop()
        for name in sorted(_imported_names(current)):
            top = name.split(".")[0]
            if top in sys.stdlib_module_names or top == "__future__" or top in LAMBDA_RUNTIME_PROVIDES:
                continue
            if top != PACKAGE_DIR.name:
                raise LambdaPackageError(f"{current} imports {name}, which the Lambda runtime does not have")
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):
                file = _package_file(".".join(parts[:depth]))
                member = file.relative_to(PACKAGE_DIR.parent).as_posix() if file else None
                if member and member not in bundled:
                    bundled[member] = file
                    pending.append(file)
    return bundled


def _zip_entry(name: str) -> zipfile.ZipInfo:
    entry = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    entry.external_attr = 0o644 << 16
    entry.compress_type = zipfile.ZIP_DEFLATED
    return entry


def package_lambdas(terraform_root: str | Path, lambda_dir: str | Path | None = None) -> dict[str, Path]:
    """Zip each Lambda's source, with the package modules it imports, into ``terraform/.build/<name>.zip``,
    byte for byte the same for the same sources (sorted members, fixed time stamps and modes), so
    ``source_code_hash`` changes only when the code does."""
    terraform_root = Path(terraform_root)
    lambda_dir = Path(lambda_dir) if lambda_dir else terraform_root.resolve().parent / "lambda"
    out = terraform_root / BUILD_DIR
    out.mkdir(parents=True, exist_ok=True)
    packages = {}
    for name in LAMBDAS:
        source = lambda_dir / f"{name}.py"
        members = {source.name: source, **bundled_modules(source)}
        target = out / f"{name}.zip"
        tmp = target.with_suffix(".zip.tmp")
        with zipfile.ZipFile(tmp, "w") as archive:
            for member in sorted(members):
                archive.writestr(_zip_entry(member), members[member].read_bytes())
        tmp.replace(target)
        packages[name] = target
    return packages


def image_tag(code_version: str, now: datetime | None = None) -> str:
    """Tags are immutable in ECR here: one per commit; a dirty tree gets a time-stamped tag of its own."""
    tag = re.sub(r"[^A-Za-z0-9_.-]", "-", code_version)
    if not tag:
        raise ValueError("empty code version")
    if tag.endswith("-dirty"):
        tag += f"-{(now or datetime.now(UTC)):%Y%m%d%H%M%S}"
    return tag[:128]
