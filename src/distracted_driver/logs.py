"""Daemon logs: to a file through a rotating handler, so that no log grows without bound.

The gateway writes a line per request (40,000 requests made 9.5 MB of one
file before rotation); the runtime and the model servers log events. Each
daemon takes ``--log-file``, ``--log-max-bytes`` and ``--log-backups``; with
no file it logs to stderr, as a command run by hand should.
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LogRotation:
    """A log is rotated at ``max_bytes``; ``backups`` older files (``.1`` … ``.N``) are kept."""

    max_bytes: int = 5 * 1024 * 1024
    backups: int = 3

    def __post_init__(self) -> None:
        if self.max_bytes < 1024 or self.backups < 1:
            raise ValueError("log rotation needs max_bytes >= 1024 and backups >= 1")

    def arguments(self, log_file: str | Path) -> list[str]:
        """The command-line flags that give a daemon this log."""
        return ["--log-file", str(log_file), "--log-max-bytes", str(self.max_bytes), "--log-backups", str(self.backups)]


def add_log_arguments(parser: argparse.ArgumentParser) -> None:
    default = LogRotation()
    parser.add_argument("--log-file", type=Path, default=None, help="log to this file, rotated (default: stderr)")
    parser.add_argument(
        "--log-max-bytes",
        type=int,
        default=default.max_bytes,
        help=f"rotate the log file at this size (default {default.max_bytes})",
    )
    parser.add_argument(
        "--log-backups", type=int, default=default.backups, help=f"rotated log files kept (default {default.backups})"
    )


def configure_logging(args: argparse.Namespace, format: str, level: int = logging.INFO) -> None:
    """Root logging for a daemon, from the flags of ``add_log_arguments``."""
    if args.log_file is None:
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
    else:
        rotation = LogRotation(args.log_max_bytes, args.log_backups)
        args.log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(
            args.log_file, maxBytes=rotation.max_bytes, backupCount=rotation.backups, encoding="utf-8"
        )
    handler.setFormatter(logging.Formatter(format))
    logging.basicConfig(level=level, handlers=[handler], force=True)
