"""Facts about the machine the code runs on."""

from __future__ import annotations

import os


def cpu_count() -> int:
    """Cores this process may use (its affinity mask, which a container or taskset may narrow), not the machine's total."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
