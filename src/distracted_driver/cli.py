"""How a command (an ``inv`` task) ends when something expected goes wrong: one line and a known exit status.

Exit statuses, the same for every task:

- 0: done.
- 1: the task could not do its work: a missing prerequisite (no model
  trained yet, no endpoint), a failed job, a full disk, a permission
  problem, an AWS call that failed. invoke's own refusals of a command line
  (an unknown flag, a missing value) are also 1.
- 2: a bad argument or bad input; the line names the flag or the path.
- 130: interrupted (Ctrl-C).

``pipeline.run`` also exits with its outcome's status (3, 4, 9, 10-18; see
``pipeline.outcomes``), and a task may say more in its help. Errors that
are expected (this package's own, bad values, file-system and AWS errors)
become one line saying what is wrong and what to do; anything else is a bug
and keeps its traceback. An error class of ours that means something other
than its base class's rule (below) says so with a class attribute
``exit_status``: e.g. ``HostingError`` (a refusal, 2) or ``NotCleared`` (3).
Nothing here knows invoke: ``tasks.py`` turns a ``Failure`` into its exit.
"""

from __future__ import annotations

import ast
import errno
import inspect
import re
import resource
import shutil
import textwrap
from dataclasses import dataclass
from pathlib import Path

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_FILE_TOO_LARGE = (errno.EFBIG,)
_PACKAGE = __name__.split(".")[0]


@dataclass(frozen=True)
class Failure:
    message: str
    code: int


def missing_arguments(body, arguments: dict) -> Failure | None:
    """A required flag (a parameter without a default) that was not given."""
    missing = [
        name
        for name, parameter in inspect.signature(body).parameters.items()
        if parameter.default is inspect.Parameter.empty and name in arguments and arguments[name] is None
    ]
    if not missing:
        return None
    flags = ", ".join(_flag(name) for name in missing)
    return Failure(f"{flags} is required (--help describes it)", EXIT_USAGE)


REQUIRED = inspect.Parameter.empty


def flag_table(text: str) -> dict[str, tuple[object, str]]:
    """A task's flags, each declared once as a ``name=default: help`` line -> {name: (default, help)}.

    The default is a Python literal (``"latest"``, ``8``, ``None``); a flag without one is required
    (``REQUIRED``). A line indented deeper than the flags continues the help of the flag above it.
    """
    table: dict[str, tuple[object, str]] = {}
    for line in filter(str.strip, textwrap.dedent(text).splitlines()):
        if line[0].isspace() and table:
            name, (default, help_text) = next(reversed(table.items()))
            table[name] = default, f"{help_text} {line.strip()}"
            continue
        declared = re.fullmatch(r"(\w+)(?:=(.+?))?: (.+)", line.strip())
        if declared is None:
            raise ValueError(f"{line.strip()!r} is not a flag declaration (name=default: help)")
        name, default, help_text = declared.groups()
        if name in table:
            raise ValueError(f"the flag {name} is declared twice")
        table[name] = REQUIRED if default is None else ast.literal_eval(default), help_text
    return table


def flag_signature(flags: dict[str, tuple[object, str]]) -> inspect.Signature:
    """What invoke reads a task's flags from: the context, then one keyword parameter per flag, in order."""
    context = inspect.Parameter("c", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    keyword = inspect.Parameter.KEYWORD_ONLY
    return inspect.Signature([context] + [inspect.Parameter(n, keyword, default=d) for n, (d, _) in flags.items()])


def flag_help(flags: dict[str, tuple[object, str]]) -> dict[str, str]:
    """invoke's help table: the flag as typed (``from_`` is ``--from``) -> its help."""
    return {name.strip("_"): help_text for name, (_, help_text) in flags.items()}


def bad_value(flag: str, value: str, kind: type) -> Failure:
    """A flag's value that is not of its kind (``--epochs abc``)."""
    expected = "a whole number" if kind is int else "a number"
    return Failure(f"{flag} takes {expected}, not {value!r}", EXIT_USAGE)


def explain(error: BaseException, arguments: dict | None = None) -> Failure | None:
    """The one line and exit status for an expected failure; None for a bug (keep its traceback)."""
    arguments = arguments or {}
    if isinstance(error, KeyboardInterrupt):
        return Failure("interrupted", EXIT_INTERRUPTED)
    disk = _disk_error(error)
    if disk is not None:
        return _explain_disk(disk, arguments)
    if isinstance(error, OSError):
        return _explain_os(error, arguments)
    module = type(error).__module__
    if module.startswith(("botocore", "boto3")):
        return Failure(f"AWS: {_message(error)}", EXIT_FAILED)
    ours = module.split(".")[0] == _PACKAGE
    status = getattr(error, "exit_status", None)
    if ours and isinstance(status, int):  # the error class says what it means on the command line
        return Failure(_with_flag(_message(error), arguments), status)
    if isinstance(error, ValueError):  # a value that is wrong: a flag's, or an input's (an image, a file)
        return Failure(_with_flag(_message(error), arguments), EXIT_USAGE)
    if ours and isinstance(error, Exception):  # e.g. no such model (LookupError), a failed job (RuntimeError)
        flagged = _with_flag(_message(error), arguments)
        return Failure(flagged, EXIT_USAGE if isinstance(error, LookupError) and "--" in flagged else EXIT_FAILED)
    return None


def _message(error: BaseException) -> str:
    """The error's own words; the class name too where they are not meant for people (e.g. OSError's)."""
    text = str(error).strip() or type(error).__name__
    return text if isinstance(error, (ValueError, LookupError, RuntimeError)) else f"{type(error).__name__}: {text}"


def _flag(name: str) -> str:
    return "--" + name.strip("_").replace("_", "-")


def _with_flag(message: str, arguments: dict) -> str:
    """Name the flag whose value the message quotes, unless it names a flag already."""
    if "--" in message:
        return message
    words = message.replace(":", " ").split()
    for name, value in arguments.items():
        if isinstance(value, str) and value and (repr(value) in message or (len(value) > 2 and value in words)):
            return f"{_flag(name)}: {message}"
    return message


def _disk_error(error: BaseException) -> OSError | None:
    """The first disk-full or file-too-large error in the chain: a failed write, then failed closes."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _DISK_FULL + _FILE_TOO_LARGE:
            return error
        error = error.__cause__ or error.__context__
    return None


def _explain_disk(error: OSError, arguments: dict) -> Failure:
    path = Path(error.filename) if error.filename else None
    where = f" writing {path}" if path else ""
    if error.errno in _FILE_TOO_LARGE:
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        cap = "" if limit == resource.RLIM_INFINITY else f" of {_size(limit)}"
        return Failure(
            f"file too large{where}: the file-size limit{cap} was reached; raise it (ulimit -f) and run again",
            EXIT_FAILED,
        )
    flag = (_flag_for(path, arguments) or ("--out" if "out" in arguments else None)) if path else None
    elsewhere = f", or write elsewhere with {flag}" if flag else ""
    free = _free_space(path) if path else None
    room = f" ({_size(free[1])} free on {free[0]})" if free else ""
    return Failure(
        f"no space left on the device{where}{room}: free some space{elsewhere}, then run it again", EXIT_FAILED
    )


def _explain_os(error: OSError, arguments: dict) -> Failure:
    path = error.filename
    what = (error.strerror or type(error).__name__).lower()
    if path is None and error.errno is None:  # raised with a message of ours, e.g. "DIR is not a directory"
        return Failure(_with_flag(str(error), arguments), EXIT_USAGE)
    if path is None:
        return Failure(f"{type(error).__name__}: {error}", EXIT_FAILED)
    flag = _flag_for(Path(path), arguments)
    given = f" (given as {flag})" if flag else ""
    if isinstance(error, (FileNotFoundError, NotADirectoryError, IsADirectoryError)):
        return Failure(f"{path}: {what}{given}; check the path", EXIT_USAGE if flag else EXIT_FAILED)
    if isinstance(error, PermissionError):
        return Failure(f"{path}: {what}{given}; check who owns it, or use another path", EXIT_FAILED)
    return Failure(f"{path}: {what}{given}", EXIT_FAILED)


def _flag_for(path: Path, arguments: dict) -> str | None:
    """The flag whose value is ``path`` or a folder above it."""
    target = Path(path).resolve()
    for name, value in arguments.items():
        if isinstance(value, (str, Path)) and str(value).strip() not in ("", "."):
            given = Path(value).resolve()
            if target == given or target.is_relative_to(given):
                return _flag(name)
    return None


def _free_space(path: Path) -> tuple[Path, int] | None:
    """(the nearest existing folder of ``path``, the bytes free on its file system)."""
    for folder in (path, *path.parents):
        if folder.exists():
            return folder, shutil.disk_usage(folder).free
    return None


def _size(count: float) -> str:
    units = ("bytes", "KB", "MB", "GB", "TB")
    index = 0
    while count >= 1024 and index < len(units) - 1:
        count, index = count / 1024, index + 1
    return f"{count:.0f} bytes" if index == 0 else f"{count:.1f} {units[index]}"
