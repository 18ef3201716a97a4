"""supervisord and the control socket work from a state directory of any depth.

A Unix socket address holds 107 bytes; CI's temporary directories are deeper than that.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from distracted_driver.supervision import Program, Supervisor
from distracted_driver.system import MAX_UNIX_PATH, unix_socket_path


def _deep(tmp_path: Path) -> Path:
    deep = tmp_path / ("a-state-directory-nested-deeper-than-a-socket-address-can-name-" * 2) / ".state"
    deep.mkdir(parents=True)
    return deep


def _state_whose_socket_is(tmp_path: Path, socket_name: str, length: int) -> Path:
    """A state directory where ``socket_name`` makes a path of exactly ``length`` bytes."""
    filler = length - len(str(tmp_path / "x" / ".state" / socket_name).encode()) + 1
    assert filler > 0, f"{tmp_path} is too deep for this test"
    state = tmp_path / ("d" * filler) / ".state"
    state.mkdir(parents=True)
    assert len(str(state / socket_name).encode()) == length
    return state


def test_a_short_path_is_kept_and_a_long_one_gets_a_private_stand_in(tmp_path):
    short = Path("/tmp/x/control.sock")
    assert unix_socket_path(short) == short
    long = _deep(tmp_path) / "control.sock"
    assert len(str(long)) > MAX_UNIX_PATH
    stand_in = unix_socket_path(long)
    assert len(str(stand_in)) + len(".tmp.") <= MAX_UNIX_PATH
    assert stand_in == unix_socket_path(long) and stand_in.name.endswith("-control.sock")
    assert unix_socket_path(long.with_name("other.sock")) != stand_in


def test_a_path_that_fits_but_leaves_no_room_for_a_staging_name_gets_a_stand_in(tmp_path):
    """supervisord binds at "<path>.<pid>" first: a path that fits alone can still fail."""
    crowded = _state_whose_socket_is(tmp_path, "supervisord.sock", MAX_UNIX_PATH - 5) / "supervisord.sock"
    stand_in = unix_socket_path(crowded)
    assert stand_in != crowded
    assert len(str(stand_in)) + len(".4194304") <= MAX_UNIX_PATH
    info = stand_in.parent.stat()
    assert info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) == 0o700


@pytest.mark.slow
@pytest.mark.parametrize("depth", ["deep", "one-pid-short"])
def test_supervisord_runs_a_program_from_a_deep_state_directory(tmp_path, depth):
    if depth == "deep":
        state = _deep(tmp_path)
    else:  # the path fits, "<path>.<pid>" does not: what CI met
        state = _state_whose_socket_is(tmp_path, "supervisor/supervisord.sock", MAX_UNIX_PATH - 5)
    supervisor = Supervisor(state)
    program = Program(
        "sleeper", [sys.executable, "-c", "import time; time.sleep(120)"], state, state / "sleeper.out", stop_wait_s=2
    )
    try:
        info = supervisor.ensure(program)
        assert info["statename"] in ("STARTING", "RUNNING"), info
        assert supervisor.info("sleeper")["pid"] > 0
    finally:
        assert supervisor.remove("sleeper", stop_wait_s=5)
    assert supervisor.info("sleeper") is None
