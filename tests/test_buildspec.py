"""buildspec.yml: CodeBuild's schema as far as we use it, every command it runs exists here, and the order is safe.

These tests check properties, not the exact list of commands: adding a step breaks
nothing, while a missing task or option, a deploy before the tests or the
configuration checks, or a build that goes on past a failure does.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from invoke import Collection, Task

from distracted_driver.pipeline import outcomes

REPO = Path(__file__).resolve().parents[1]
PHASES = ("install", "pre_build", "build", "post_build")  # CodeBuild runs them in this order


@dataclass(frozen=True)
class Call:
    """One call of ``make`` or ``inv`` in the buildspec, where it stands and what follows it on its line."""

    phase: str
    position: int  # across all phases, in the order CodeBuild runs them
    program: str
    args: list[str]
    tolerated: str  # what follows ``||``: how a failure of this call is handled

    @property
    def name(self) -> str:
        return self.args[0] if self.args else ""

    def option(self, flag: str) -> str | None:
        for index, word in enumerate(self.args):
            if word == flag and index + 1 < len(self.args):
                return self.args[index + 1]
            if word.startswith(flag + "="):
                return word.split("=", 1)[1]
        return None


@pytest.fixture(scope="module")
def buildspec() -> dict:
    return yaml.safe_load((REPO / "buildspec.yml").read_text())


@pytest.fixture(scope="module")
def calls(buildspec) -> list[Call]:
    return _calls(buildspec)


@pytest.fixture(scope="module")
def namespace() -> Collection:
    spec = importlib.util.spec_from_file_location("dd_tasks", REPO / "tasks.py")
    tasks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tasks)
    return tasks.ns


def _calls(buildspec: dict) -> list[Call]:
    """Every call of ``inv``/``make`` (also inside ``if`` blocks and ``||`` chains), in the order they run."""
    found = []
    for phase in PHASES:
        for command in buildspec["phases"].get(phase, {}).get("commands", []):
            for line in command.splitlines():
                head, _, tolerated = line.partition("||")
                for part in re.split(r"&&|;|\bthen\b", head):
                    words = shlex.split(part.strip(), comments=True) if part.strip() else []
                    while words and "=" in words[0] and not words[0].startswith("-"):  # VAR=value prefixes
                        words = words[1:]
                    if words and Path(words[0]).name in ("inv", "make"):
                        found.append(Call(phase, len(found), Path(words[0]).name, words[1:], tolerated.strip()))
    return found


def _first(calls: list[Call], program: str, name: str) -> Call:
    matching = [call for call in calls if call.program == program and call.name == name]
    assert matching, f"the buildspec never runs {program} {name}"
    return matching[0]


def _task(namespace: Collection, name: str) -> Task:
    collection, task_name = namespace, name
    if "." in name:
        collection_name, task_name = name.split(".", 1)
        assert collection_name in namespace.collections, f"no task collection {collection_name}"
        collection = namespace.collections[collection_name]
    elif name in namespace.collections:  # `inv loadtest` runs the collection's default task
        collection, task_name = namespace.collections[name], namespace.collections[name].default
    assert task_name in collection.tasks, f"no task {name}"
    return collection.tasks[task_name]


# --- the schema ---------------------------------------------------------------------------------


def test_version_phases_reports_and_artifacts(buildspec):
    assert str(buildspec["version"]) == "0.2"
    phases = list(buildspec["phases"])
    assert phases and set(phases) <= set(PHASES), phases
    assert phases == sorted(phases, key=PHASES.index), "phases are written in the order CodeBuild runs them"
    assert all(buildspec["phases"][phase].get("commands") for phase in phases)
    assert str(buildspec["phases"]["install"]["runtime-versions"]["python"]) == "3.11"
    assert buildspec["env"]["variables"]["DD_BACKEND"] == "aws"


def test_the_junit_report_the_tests_write_is_the_one_declared_and_kept(buildspec, calls):
    """pytest's --junitxml path is matched by the report group's files and by the artifacts."""
    make_test = _first(calls, "make", "test")
    command = next(
        c for phase in PHASES for c in buildspec["phases"].get(phase, {}).get("commands", []) if "make test" in c
    )
    written = re.search(r"--junitxml=(\S+?)[\"' ]", command)
    assert written, f"make test in {make_test.phase} writes no JUnit report"
    path = written.group(1)
    report = buildspec["reports"]["pytest"]
    assert report["file-format"] == "JUNITXML"
    assert any(fnmatch.fnmatch(path, pattern) for pattern in report["files"]), (path, report["files"])
    assert any(fnmatch.fnmatch(path, pattern) for pattern in buildspec["artifacts"]["files"])


# --- every command exists -------------------------------------------------------------------------


def test_every_make_target_exists(calls):
    targets = {call.name for call in calls if call.program == "make"}
    assert targets
    for target in targets:  # make -n: would this target run? (prints, executes nothing)
        dry = subprocess.run(["make", "-n", target], cwd=REPO, capture_output=True, text=True, timeout=30)
        assert dry.returncode == 0 and "No rule to make target" not in dry.stderr, (target, dry.stderr)


def test_every_inv_task_exists_with_its_options(calls, namespace):
    inv_calls = [call for call in calls if call.program == "inv"]
    assert inv_calls, "the buildspec runs invoke tasks"
    for call in inv_calls:
        task = _task(namespace, call.name)
        accepted = {f"--{argument.name.replace('_', '-')}" for argument in task.get_arguments()}
        for option in (word.split("=", 1)[0] for word in call.args[1:] if word.startswith("--")):
            assert option in accepted, f"inv {call.name} has no option {option}"


def test_every_task_that_takes_a_backend_is_told_aws(calls, namespace):
    for call in calls:
        if call.program == "inv" and "--backend" in {
            f"--{a.name}" for a in _task(namespace, call.name).get_arguments()
        }:
            assert call.option("--backend") in (None, "aws"), f"inv {call.name} --backend {call.option('--backend')}"


# --- what must run does, in a safe order ------------------------------------------------------------


def test_the_environment_is_installed_before_anything_uses_it(calls):
    install = _first(calls, "make", "install")
    assert install.phase == "install"
    assert all(call.position > install.position for call in calls if call.program == "inv")


def test_the_tests_and_the_account_checks_pass_before_anything_is_deployed(buildspec, calls):
    """The tests, the configuration checks and the image the deploy names all come before the pipeline run."""
    pipeline = _first(calls, "inv", "pipeline.run")
    assert pipeline.phase == "build" and buildspec["phases"]["build"].get("on-failure") == "ABORT"
    for before in (("make", "test"), ("inv", "infra.preflight"), ("inv", "infra.check"), ("inv", "infra.push-image")):
        call = _first(calls, *before)
        assert PHASES.index(call.phase) < PHASES.index(pipeline.phase), f"{' '.join(before)} runs in {call.phase}"
        assert not call.tolerated, f"a failure of {' '.join(before)} is ignored: || {call.tolerated}"


def test_the_pipeline_run_deploys_with_a_canary_and_only_a_gate_rejection_is_tolerated(calls):
    pipeline = _first(calls, "inv", "pipeline.run")
    assert pipeline.option("--strategy") == "canary" and pipeline.option("--api-url") == "$DD_API_URL"
    tolerated = [int(code) for code in re.findall(r"\$\? -eq (\d+)", pipeline.tolerated)]
    assert pipeline.tolerated == "" or tolerated == [outcomes.exit_code(outcomes.REJECTED_BY_GATE)], pipeline.tolerated
    for call in calls:
        if call is not pipeline:
            assert not re.search(r"\btrue\b|\$\? -eq", call.tolerated), (
                f"{call.program} {call.name}: || {call.tolerated}"
            )


def test_the_load_test_runs_bounded_after_the_deploy_and_only_on_a_good_build(buildspec, calls):
    load = _first(calls, "inv", "loadtest")
    assert load.position > _first(calls, "inv", "pipeline.run").position
    assert load.option("--host") == "$DD_API_URL" and load.option("--run-time")
    command = next(c for c in buildspec["phases"][load.phase]["commands"] if "inv loadtest" in c)
    assert load.phase != "post_build" or "CODEBUILD_BUILD_SUCCEEDING" in command  # post_build runs after a failure too


def test_settings_the_build_reads_come_from_terraform(buildspec):
    """Every $DD_* the commands use is a CodeBuild variable Terraform sets (SSM) or the buildspec sets."""
    from distracted_driver.infra.hcl import Configuration

    config = Configuration(REPO / "terraform")
    provided = set(config.root.value(config.root_module.locals["pipeline_settings"])) | {"DD_API_KEY"}
    provided |= set(buildspec["env"]["variables"])
    commands = [c for phase in PHASES for c in buildspec["phases"].get(phase, {}).get("commands", [])]
    used = set(re.findall(r"\$\{?(DD_[A-Z_]+)", "\n".join(commands)))
    assert used and used <= provided, used - provided
