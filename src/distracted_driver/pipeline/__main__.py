"""``python -m distracted_driver.pipeline run --options JSON``: one run in its own process (the watcher's child).

Settings come from ``DD_*`` variables; the exit status is the outcome's.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from distracted_driver.config import Settings
from distracted_driver.pipeline.options import RunOptions
from distracted_driver.pipeline.run import print_summary, run_pipeline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m distracted_driver.pipeline")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the pipeline once")
    run.add_argument("--options", default="{}", help="RunOptions as a JSON object")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    record = run_pipeline(Settings.from_env(), RunOptions.from_dict(json.loads(args.options)))
    print_summary(record)
    return record.exit_code


if __name__ == "__main__":
    sys.exit(main())
