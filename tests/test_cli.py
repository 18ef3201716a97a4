"""The command line: every task has --help, and an expected failure ends in one line with a documented status.

``distracted_driver.cli`` says how a failure reads and which status it gets; ``tasks.py`` applies it to
every task. A bad argument never prints a traceback, nor does a full disk.
"""

from __future__ import annotations

import errno
import json
import os
import re
import resource
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from distracted_driver.cli import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    REQUIRED,
    explain,
    flag_help,
    flag_signature,
    flag_table,
    missing_arguments,
)
from distracted_driver.fsutil import naming_failed_writes

REPO = Path(__file__).resolve().parents[1]
INV = Path(sys.executable).parent / "inv"
PARSE_ERROR = 1  # invoke's own refusal of a command line (an unknown flag)

# One bad argument per task, refused before anything is started, with the status it must end in.
# A task missing here gets an unknown flag.
BAD_ARGUMENTS = {
    "demo": (["--fast"], PARSE_ERROR),
    "down": (["--everything"], PARSE_ERROR),
    "data.sample": (["--drivers", "abc"], EXIT_USAGE),
    "data.add": (["--from", "/nonexistent/batch"], EXIT_USAGE),
    "data.split": (["--root", "/nonexistent/sample"], EXIT_USAGE),
    "data.convert": (["--quality", "500"], EXIT_USAGE),
    "data.upload": (["--directory", "/nonexistent/channels"], EXIT_FAILED),
    "train.run": (["--epochs", "many"], EXIT_USAGE),
    "train.evaluate": (["--model", "no-such-model"], EXIT_USAGE),
    "model.list": (["--backend", "nowhere"], EXIT_USAGE),
    "model.gate": (["--candidate", "no-such-model"], EXIT_USAGE),
    "model.set-live": (["--job", "no-such-model"], EXIT_USAGE),
    "predict.batch": (["--batch-size", "lots"], EXIT_USAGE),
    "serve.run": (["--port", "eighty"], EXIT_USAGE),
    "deploy.create": (["--instances", "two"], EXIT_USAGE),
    "deploy.swap": (["--wait", "soon"], EXIT_USAGE),
    "deploy.rollback": (["--backend", "nowhere"], EXIT_USAGE),
    "deploy.status": (["--backend", "nowhere"], EXIT_USAGE),
    "deploy.autoscale": (["--min", "few"], EXIT_USAGE),
    "deploy.invoke": (["--image", "/nonexistent/frame.jpg"], EXIT_USAGE),
    "deploy.down": (["--backend", "nowhere"], EXIT_USAGE),
    "api.up": (["--port", "eighty"], EXIT_USAGE),
    "api.down": (["--backend", "nowhere"], EXIT_USAGE),
    "api.status": (["--backend", "nowhere"], EXIT_USAGE),
    "api.key": (["--backend", "nowhere"], EXIT_USAGE),
    "loadtest.run": (["--users", "many"], EXIT_USAGE),
    "loadtest.find-capacity": (["--max-users", "many"], EXIT_USAGE),
    "pipeline.run": (["--strategy", "sideways"], EXIT_USAGE),
    "pipeline.history": (["--limit", "some"], EXIT_USAGE),
    "pipeline.watch": (["--interval", "often"], EXIT_USAGE),
    # The infra tasks run terraform or docker; a flag they do not have is refused before either starts.
    "infra.check": (["--strict"], PARSE_ERROR),
    "infra.plan": (["--region"], PARSE_ERROR),
    "infra.apply": (["--force"], PARSE_ERROR),
    "infra.destroy": (["--now"], PARSE_ERROR),
    "infra.outputs": (["--yaml"], PARSE_ERROR),
    "infra.push-image": (["--registry"], PARSE_ERROR),
}


def task_names() -> list[str]:
    listing = json.loads(
        subprocess.run(
            [str(INV), "--list", "--list-format", "json"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    )

    def walk(collection: dict, prefix: str) -> list[str]:
        names = [prefix + task["name"] for task in collection["tasks"]]
        for child in collection["collections"]:
            names += walk(child, f"{prefix}{child['name']}.")
        return names

    return walk(listing, "")


def inv(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DD_ROOT": str(root)}
    for name in ("DD_BACKEND", "AWS_PROFILE"):
        env.pop(name, None)
    return subprocess.run([str(INV), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_every_task_has_help_and_refuses_a_bad_argument_in_one_line(tmp_path):
    names = task_names()
    assert {"predict.batch", "data.convert", "pipeline.run"} <= set(names)

    def check(name: str) -> list[str]:
        problems = []
        shown = inv(tmp_path, name, "--help")
        # "--," or "--=" is invoke's short flag "-" for a long name whose letters are all taken; "-h STRING" a flag
        # that took help's letter
        if (
            shown.returncode != 0
            or "Usage:" not in shown.stdout
            or "Traceback" in shown.stdout + shown.stderr
            or re.search(r"^\s*--[,=]", shown.stdout, re.MULTILINE)
            or "-h STRING" in shown.stdout
        ):
            problems.append(f"{name} --help: exit {shown.returncode}: {(shown.stdout + shown.stderr)[-400:]}")
        args, status = BAD_ARGUMENTS.get(name, (["--no-such-flag"], PARSE_ERROR))
        refused = inv(tmp_path, name, *args)
        lines = refused.stderr.strip().splitlines()
        if refused.returncode != status or "Traceback" in refused.stdout + refused.stderr or not lines:
            problems.append(
                f"{name} {' '.join(args)}: exit {refused.returncode} (expected {status}): {refused.stderr[-600:]}"
            )
        return problems

    with ThreadPoolExecutor(2) as pool:
        problems = [problem for found in pool.map(check, names) for problem in found]
    assert not problems, "\n".join(problems)
    assert not (tmp_path / ".bucket").exists() or not any((tmp_path / ".bucket").rglob("*.tar.gz"))


@pytest.mark.slow
def test_the_messages_name_the_flag_and_what_is_missing(tmp_path):
    shown = inv(tmp_path, "predict.batch", "--help")
    assert shown.returncode == 0 and "--images" in shown.stdout
    missing = inv(tmp_path, "predict.batch")
    assert missing.returncode == EXIT_USAGE and missing.stderr.strip() == "--images is required (--help describes it)"
    number = inv(tmp_path, "data.sample", "--drivers", "abc")
    assert number.stderr.strip() == "--drivers takes a whole number, not 'abc'"
    path = inv(tmp_path, "deploy.invoke", "--image", "/nonexistent/frame.jpg")
    assert path.stderr.strip() == "/nonexistent/frame.jpg: no such file or directory (given as --image); check the path"


def _ignore_file_size_signal_and_cap_files(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.slow
def test_a_write_that_cannot_finish_during_convert_ends_in_one_line_and_leaves_nothing(tmp_path):
    from distracted_driver.data.sample import generate_sample
    from distracted_driver.data.split import split_dataset

    generate_sample(tmp_path / "sample", drivers=4, images_per_class_driver=2, test_images=0, progress=False)
    split_dataset(tmp_path / "sample", tmp_path / "lists", val_drivers=1)
    out = tmp_path / "converted"
    env = {**os.environ, "DD_ROOT": str(tmp_path)}
    run = subprocess.run(
        [str(INV), "data.convert", "--lists", str(tmp_path / "lists"), "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_ignore_file_size_signal_and_cap_files(200_000),
    )
    assert run.returncode == EXIT_FAILED, run.stderr[-2000:]
    assert "Traceback" not in run.stderr and "During handling" not in run.stderr
    assert run.stderr.strip().splitlines()[-1] == (
        f"file too large writing {out}/train/train.rec: the file-size limit of 195.3 KB was reached; "
        "raise it (ulimit -f) and run again"
    )
    assert not (out / "manifest.json").exists() and not [p for p in out.rglob("*") if p.is_file()]


def test_a_full_disk_names_the_path_the_free_space_and_the_flag(tmp_path):
    target = tmp_path / "converted" / "train" / "train.rec"
    with pytest.raises(OSError) as caught, naming_failed_writes(target):
        with open("/dev/full", "wb") as device:  # a real ENOSPC, from the write and again from the close
            device.write(b"\0" * 100_000)
            device.flush()
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    failure = explain(caught.value, {"out": str(tmp_path / "converted"), "lists": None})
    assert failure.code == EXIT_FAILED
    assert failure.message.startswith(f"no space left on the device writing {target} (")
    assert f"free on {tmp_path}): free some space, or write elsewhere with --out, then run it again" in failure.message


def test_chained_failures_are_told_by_the_first_disk_error():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/data/out/train.rec")
        except OSError:
            raise ValueError("I/O operation on closed file")  # noqa: B904 - explain() reads the implicit chain
    except ValueError as error:
        failure = explain(error, {})
    assert failure.message.startswith("no space left on the device writing /data/out/train.rec")


def test_bugs_keep_their_traceback_and_interruptions_have_their_status():
    assert explain(TypeError("unsupported operand"), {}) is None
    assert explain(AttributeError("no attribute"), {}) is None
    assert explain(KeyboardInterrupt(), {}).code == EXIT_INTERRUPTED
    assert (
        explain(ValueError("backend must be one of ('local', 'aws'), not 'x'"), {"backend": "x"}).message
        == "--backend: backend must be one of ('local', 'aws'), not 'x'"
    )


def test_a_required_flag_that_was_not_given_is_named():
    def body(c, images, model="latest"):
        pass

    assert (
        missing_arguments(body, {"images": None, "model": "latest"}).message
        == "--images is required (--help describes it)"
    )
    assert missing_arguments(body, {"images": "imgs", "model": "latest"}) is None


def test_an_error_class_of_ours_says_its_exit_status_and_others_follow_the_rule():
    from distracted_driver.hosting import HostingError
    from distracted_driver.loadtest import LoadTestError
    from distracted_driver.train.gate import GateError, NotCleared
    from distracted_driver.train.trainer import TrainingFailed

    assert explain(HostingError("endpoint e exists already"), {}).code == EXIT_USAGE  # a RuntimeError, yet a refusal
    assert explain(GateError("no validation data"), {}).code == EXIT_USAGE
    assert explain(LoadTestError("the local API is not running"), {}).code == EXIT_USAGE
    refused = explain(NotCleared("refused: no gate record"), {"model": "m1"})
    assert (refused.code, refused.message) == (3, "refused: no gate record")
    assert explain(TrainingFailed("job j failed"), {}).code == EXIT_FAILED


def test_each_flag_is_declared_once_with_its_default_and_an_indented_line_continues_its_help():
    table = flag_table(
        """
        from_: a directory: the batch
        workers=0: local: threads; aws: threads checking
            and moving images
        model="latest": a version
        backend=None: local or aws
    """
    )
    assert table == {
        "from_": (REQUIRED, "a directory: the batch"),
        "workers": (0, "local: threads; aws: threads checking and moving images"),
        "model": ("latest", "a version"),
        "backend": (None, "local or aws"),
    }
    assert str(flag_signature(table)) == "(c, *, from_, workers=0, model='latest', backend=None)"
    assert flag_help(table)["from"] == "a directory: the batch"
    with pytest.raises(ValueError, match="not a flag declaration"):
        flag_table("threads how many")
    with pytest.raises(ValueError):
        flag_table("workers=zero: not a literal")
    with pytest.raises(ValueError, match="declared twice"):
        flag_table("workers=0: threads\nworkers=1: processes")
