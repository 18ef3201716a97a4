"""Load-test stage: Locust against the REST API, SLO gates, reports, capacity search.

``locust_run`` runs Locust headless as a bounded subprocess and reads its CSV;
``slo`` holds the objectives of ``load_test/slo.toml``; ``report`` draws the
PNGs; ``run`` ties them into ``run_loadtest`` and ``find_capacity``.
"""

from distracted_driver.loadtest.locust_run import LoadTestError, LoadTestSummary
from distracted_driver.loadtest.run import CapacityResult, LoadTestResult, find_capacity, run_loadtest
from distracted_driver.loadtest.slo import SLO

__all__ = [
    "SLO",
    "CapacityResult",
    "LoadTestError",
    "LoadTestResult",
    "LoadTestSummary",
    "find_capacity",
    "run_loadtest",
]
