"""The whole local REST stack for tests: a one-instance endpoint of a tiny real model, the API gateway in front.

Real processes on loopback: the local runtime (router) with one model server,
and the gateway daemon running the real Lambda handler. ``start_stack`` puts
the artifact in a fresh local bucket, registers and deploys it, then starts
the gateway; ``ApiStack.close`` stops both and checks nothing is left.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import psutil

from distracted_driver.config import Settings
from distracted_driver.gateway import UsagePlan, gateway_status, start_gateway, stop_gateway
from distracted_driver.hosting.base import AlarmThresholds, ModelSpec, TrafficRouting

SERVER_MODULE = "distracted_driver.serve.server"


@dataclass
class ApiStack:
    settings: Settings
    url: str
    api_key: str
    runtime_url: str
    model_version: str

    @property
    def predict_url(self) -> str:
        return f"{self.url}/predict"

    def gateway_pid(self) -> int:
        return gateway_status(self.settings)["pid"]

    def model_server_pids(self) -> list[int]:
        """Model server processes of this stack (their command lines name paths under its root)."""
        root = str(self.settings.root)
        pids = []
        for process in psutil.process_iter(["pid", "cmdline"]):
            cmdline = process.info["cmdline"] or []
            if SERVER_MODULE in cmdline and any(root in arg for arg in cmdline):
                pids.append(process.info["pid"])
        return sorted(pids)

    def process_ids(self) -> list[int]:
        return [self.gateway_pid(), *self.model_server_pids()]

    def close(self) -> None:
        from distracted_driver.hosting.local import LocalHosting

        servers = self.model_server_pids()
        try:
            stop_gateway(self.settings)
        finally:
            LocalHosting(self.settings).delete()
        gone, alive = psutil.wait_procs([psutil.Process(p) for p in servers if psutil.pid_exists(p)], timeout=10)
        for process in alive:
            process.kill()


def start_stack(root: Path, artifact, plan: UsagePlan | None = None) -> ApiStack:
    """Deploy ``artifact`` (a ``model_fixtures.FixtureArtifact``) locally and start the API in front of it."""
    from distracted_driver.hosting.local import LocalHosting
    from distracted_driver.storage import open_storage

    settings = Settings(root=root)
    key = artifact.publish(open_storage(settings), settings)  # and registers it
    hosting = LocalHosting(settings)
    try:
        result = hosting.deploy(
            ModelSpec(artifact.version, key), TrafficRouting(strategy="all-at-once"), AlarmThresholds()
        )
        if result.outcome != "deployed":
            raise RuntimeError(f"deploy failed: {result.outcome}: {result.reason}")
        status = start_gateway(settings, port=0, plan=plan or UsagePlan(rate=2000, burst=2000))
    except BaseException:
        stop_gateway(settings)
        hosting.delete()
        raise
    return ApiStack(settings, status["url"], status["api_key"], status["runtime_url"], artifact.version)
