"""buildspec.yml: CodeBuild's schema as far as we use it, and every command it runs exists here."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PHASES = ("install", "pre_build", "build", "post_build")


@pytest.fixture(scope="module")
def buildspec() -> dict:
    return yaml.safe_load((REPO / "buildspec.yml").read_text())


@pytest.fixture(scope="module")
def commands(buildspec) -> list[str]:
    return [command for phase in PHASES for command in buildspec["phases"][phase]["commands"]]


def _invocations(commands: list[str], program: str) -> list[list[str]]:
    """Argument lists of every call of ``inv``/``make`` (also inside ``if`` blocks and ``||`` chains)."""
    calls = []
    for command in commands:
        for line in command.splitlines():
            for part in re.split(r"\|\||&&|;|\bthen\b", line):
                words = shlex.split(part.strip(), comments=True) if part.strip() else []
                while words and "=" in words[0] and not words[0].startswith("-"):  # VAR=value prefixes
                    words = words[1:]
                if words and Path(words[0]).name == program:
                    calls.append(words[1:])
    return calls


def test_version_phases_reports_and_artifacts(buildspec):
    assert str(buildspec["version"]) == "0.2"
    assert list(buildspec["phases"]) == list(PHASES)
    assert buildspec["phases"]["install"]["runtime-versions"]["python"] in (3.11, "3.11")
    report = buildspec["reports"]["pytest"]
    assert report["file-format"] == "JUNITXML" and report["files"] == ["reports/junit/*.xml"]
    assert buildspec["artifacts"]["files"] == ["reports/**/*"]
    assert buildspec["env"]["variables"]["DD_BACKEND"] == "aws"


def test_the_tests_write_the_junit_report_the_buildspec_declares(buildspec):
    pre_build = " ".join(buildspec["phases"]["pre_build"]["commands"])
    assert 'PYTEST_ADDOPTS="--junitxml=reports/junit/pytest.xml" make test' in pre_build


def test_every_make_target_exists(commands):
    targets = [call[0] for call in _invocations(commands, "make")]
    assert targets == ["install", "checkov-env", "test"]
    for target in targets:  # make -n: would this target run? (prints, executes nothing)
        dry = subprocess.run(["make", "-n", target], cwd=REPO, capture_output=True, text=True, timeout=30)
        assert "No rule to make target" not in dry.stderr, dry.stderr


def test_every_inv_task_exists_with_its_options(commands):
    import importlib.util

    from invoke import Collection

    spec = importlib.util.spec_from_file_location("dd_tasks", REPO / "tasks.py")
    tasks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tasks)
    ns = tasks.ns
    calls = _invocations(commands, "inv")
    assert calls, "the buildspec runs invoke tasks"
    for call in calls:
        name, options = call[0], [word for word in call[1:] if word.startswith("--")]
        collection, task_name = ns, name
        if "." in name:
            collection_name, task_name = name.split(".", 1)
            collection = ns.collections[collection_name]
        elif name in ns.collections:  # `inv loadtest` runs the collection's default task
            collection, task_name = ns.collections[name], ns.collections[name].default
        assert isinstance(collection, Collection) and task_name in collection.tasks, f"no task {name}"
        task = collection.tasks[task_name]
        accepted = {f"--{argument.name.replace('_', '-')}" for argument in task.get_arguments()}
        for option in options:
            assert option.split("=", 1)[0] in accepted, f"inv {name} has no option {option}"


def test_the_pipeline_stages_run_on_aws_in_order(commands):
    tasks = [call[0] for call in _invocations(commands, "inv")]
    assert tasks == ["infra.preflight", "infra.check", "infra.push-image", "pipeline.run", "pipeline.history", "loadtest"]
    pipeline = next(call for call in _invocations(commands, "inv") if call[0] == "pipeline.run")
    assert pipeline[pipeline.index("--backend") + 1] == "aws"
    assert pipeline[pipeline.index("--strategy") + 1] == "canary"
    assert pipeline[pipeline.index("--api-url") + 1] == "$DD_API_URL"
    load = next(call for call in _invocations(commands, "inv") if call[0] == "loadtest")
    assert load[load.index("--host") + 1] == "$DD_API_URL" and "--run-time" in load


def test_settings_the_build_reads_come_from_terraform(commands):
    """Every $DD_* the commands use is a CodeBuild variable Terraform sets (SSM) or the buildspec sets."""
    from distracted_driver.infra.hcl import Configuration

    config = Configuration(REPO / "terraform")
    provided = set(config.root.value(config.root_module.locals["pipeline_settings"])) | {"DD_API_KEY", "DD_BACKEND"}
    used = set(re.findall(r"\$\{?(DD_[A-Z_]+)", "\n".join(commands)))
    assert used and used <= provided
