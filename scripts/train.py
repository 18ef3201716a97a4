#!/usr/bin/env python3
"""Training entry point in SageMaker script mode (``SM_CHANNEL_*``, ``SM_MODEL_DIR``, hyperparameters as flags).

The same file runs in two places:

- locally, as a subprocess of ``inv train.run`` (``distracted_driver.train.runner``), from the
  repository with the project installed in the virtual environment;
- as the entry point of a SageMaker PyTorch training job, whose ``source_dir`` is staged by
  ``distracted_driver.train.source_dir.stage_source_dir``: this file, the ``distracted_driver``
  package beside it, and a ``requirements.txt`` the container installs before running it.

It only parses flags and calls ``distracted_driver.train.job.main``; run it with ``--help``.
"""

import sys
from pathlib import Path

# Run from a checkout without installing: the package lives in ../src. In a SageMaker
# source_dir the package sits beside this file, which Python already has on sys.path.
_SRC = Path(__file__).resolve().parent.parent / "src"
if (_SRC / "distracted_driver").is_dir() and str(_SRC) not in sys.path:
    sys.path.insert(0, str(_SRC))

from distracted_driver.train.job import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
