"""Blue/green updates as SageMaker's deployment guardrails run them.

1. provision: start the green fleet for the new endpoint config, each instance
   healthy on ``/ping`` (the variant name stays the same, so autoscaling holds;
   green gets as many instances as blue has now when a policy is registered);
2. smoke test: every green instance answers every smoke image (real JPEGs) with
   ten probabilities that sum to one and the expected ``X-Model-Version``;
   until then green receives no traffic at all;
3. shift traffic: ALL_AT_ONCE, CANARY (a share, a wait, then the rest) or
   LINEAR (a step every wait), watching the alarms;
4. bake with all traffic on green, then the termination wait, still watching;
5. promote green to blue and retire the old fleet, each instance drained first.

An alarm (error rate or p99 latency of the green fleet, from the router's own
request log), a manual rollback or the maximum execution time, at any point
after traffic moved, sends all traffic back to blue and retires green. A
failure before traffic moved retires green and leaves blue as it was.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from dataclasses import asdict

import aiohttp

from distracted_driver.hosting.base import AlarmThresholds, TrafficRouting
from distracted_driver.hosting.local import endpoint as states
from distracted_driver.hosting.local.alarms import breached
from distracted_driver.hosting.local.fleet import Fleet
from distracted_driver.hosting.local.instances import InstanceError
from distracted_driver.hosting.local.state import EndpointConfigRecord
from distracted_driver.hosting.smoke import answer_problem, content_type

log = logging.getLogger("distracted_driver.hosting.runtime")

ALARM_INTERVAL_S = 0.25
SMOKE_TIMEOUT_S = 30.0
_ids = itertools.count(1)


class RollBack(Exception):
    """Traffic must go back to blue: an alarm, a manual rollback, or the time limit."""


class SmokeTestFailed(Exception):
    pass


class Deployment:
    def __init__(
        self,
        runtime,
        endpoint: states.Endpoint,
        config: EndpointConfigRecord,
        routing: TrafficRouting,
        alarms: AlarmThresholds,
        smoke_images: list[bytes],
        kind: str,
    ):
        self.runtime = runtime
        self.endpoint = endpoint
        self.config = config
        self.routing = routing
        self.alarms = alarms
        self.smoke_images = smoke_images
        self.creating = not endpoint.blue
        self._rollback_reason: str | None = None
        self._wake = asyncio.Event()
        self._t0 = time.monotonic()
        self.record = {
            "id": f"deployment-{int(time.time())}-{next(_ids)}",
            "kind": "create" if self.creating else kind,
            "endpoint": endpoint.name,
            "from_config": endpoint.config_name,
            "to_config": config.name,
            "from_versions": {v: f.model.name for v, f in endpoint.blue.items()},
            "to_versions": {v.variant_name: v.model_name for v in config.variants},
            "routing": asdict(routing),
            "alarms": asdict(alarms),
            "phase": "provisioning",
            "green_percent": 0.0,
            "started": time.time(),
            "finished": None,
            "outcome": None,
            "reason": "",
            "events": [],
            "timings": {},
            "alarm_state": "INSUFFICIENT_DATA",
        }

    # --- control ---------------------------------------------------------------------

    def request_rollback(self, reason: str) -> None:
        self._rollback_reason = reason
        self._wake.set()

    def _event(self, message: str) -> None:
        elapsed = time.monotonic() - self._t0
        self.record["events"].append({"time": time.time(), "elapsed": round(elapsed, 3), "message": message})
        log.info("%s %s (+%.2f s): %s", self.endpoint.name, self.record["id"], elapsed, message)
        self.runtime.save()

    def _phase(self, name: str) -> float:
        self.record["phase"] = name
        self._event(f"phase {name}")
        return time.monotonic()

    def _timed(self, name: str, since: float) -> None:
        self.record["timings"][name] = round(time.monotonic() - since, 3)

    # --- the run -----------------------------------------------------------------------

    async def run(self) -> dict:
        endpoint = self.endpoint
        endpoint.status = states.CREATING if self.creating else states.UPDATING
        endpoint.green_config = self.config
        endpoint.green = {}
        moved = False
        try:
            await self._provision()
            await self._smoke_test()
            self._check_rollback()
            if not self.creating:
                moved = True
                await self._shift()
                await self._watch_phase("baking", self.routing.bake_seconds)
                await self._watch_phase("termination-wait", self.routing.termination_wait_seconds)
            old = self._promote()
            await self._retire("retiring-blue", old)
            self._finish("deployed", "")
        except RollBack as stop:
            reason = str(stop)
            if moved:
                await self._roll_back(reason)
                self._finish("rolled-back", reason)
            else:
                await self._discard_green(reason)
                self._finish("failed", reason)
        except (InstanceError, SmokeTestFailed) as error:
            await self._discard_green(str(error))
            self._finish("failed", str(error))
        except Exception as error:  # never leave a half-done deployment behind
            log.exception("deployment %s failed", self.record["id"])
            await (self._roll_back(repr(error)) if moved else self._discard_green(repr(error)))
            self._finish("failed", repr(error))
        return self.record

    async def _provision(self) -> None:
        since = self._phase("provisioning")
        for variant in self.config.variants:
            self.endpoint.green[variant.variant_name] = self.runtime.new_fleet(self.endpoint.name, self.config, variant)
        counts = {name: self._green_count(fleet) for name, fleet in self.endpoint.green.items()}
        self._event(
            "starting green: " + ", ".join(f"{n} x{c} ({self.endpoint.green[n].model.name})" for n, c in counts.items())
        )
        results = await asyncio.gather(
            *(fleet.start(counts[name]) for name, fleet in self.endpoint.green.items()), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        self._timed("provisioning", since)
        self._event("green healthy on /ping")

    def _green_count(self, fleet: Fleet) -> int:
        """The config's count, or blue's current count when autoscaling manages the variant."""
        name = fleet.name
        policy = self.endpoint.autoscaling.get(name)
        blue = self.endpoint.blue.get(name)
        if policy and blue:
            return min(policy.max_instances, max(policy.min_instances, blue.desired()))
        return fleet.variant.instance_count

    async def _smoke_test(self) -> None:
        since = self._phase("smoke-test")
        if not self.smoke_images:
            raise SmokeTestFailed("no smoke images were given")
        checks = [
            self._smoke_one(fleet, instance, number, image)
            for fleet in self.endpoint.green.values()
            for instance in fleet.in_service()
            for number, image in enumerate(self.smoke_images)
        ]
        await asyncio.gather(*checks)
        self._timed("smoke_test", since)
        self._event(f"smoke test passed: {len(checks)} invocations on {len(self.smoke_images)} image(s)")

    async def _smoke_one(self, fleet: Fleet, instance, number: int, image: bytes) -> None:
        where = f"smoke image {number} on instance {instance.id} ({fleet.model.name})"
        try:
            async with instance.session.post(
                "/invocations",
                data=image,
                headers={"Content-Type": content_type(image)},
                timeout=aiohttp.ClientTimeout(total=SMOKE_TIMEOUT_S),
            ) as answer:
                body = await answer.read()
                version = answer.headers.get("X-Model-Version")
                status = answer.status
        except (TimeoutError, aiohttp.ClientError) as error:
            raise SmokeTestFailed(f"{where}: no answer ({error!r})") from None
        if status != 200:
            raise SmokeTestFailed(f"{where}: status {status}: {body[:300].decode(errors='replace')}")
        problem = answer_problem(body)
        if problem:
            raise SmokeTestFailed(f"{where}: {problem}")
        if version != fleet.model.name:
            raise SmokeTestFailed(f"{where}: X-Model-Version is {version!r}, expected {fleet.model.name!r}")

    async def _shift(self) -> None:
        since = self._phase("shifting")
        for fleet in self.endpoint.green.values():
            fleet.supervise()
        strategy = self.routing.strategy
        if strategy == "canary":
            steps = sorted({self.routing.canary_percent, 100})
        elif strategy == "linear":
            step = self.routing.linear_step_percent
            steps = sorted({min(100, step * k) for k in range(1, math.ceil(100 / step) + 1)})
        else:
            steps = [100]
        for percent in steps:
            self._set_share(percent)
            if percent < 100:
                await self._watch(self.routing.wait_seconds)
        self.record["timings"]["all_traffic_on_green"] = round(time.monotonic() - self._t0, 3)
        self.record["all_traffic_on_green_at"] = time.time()
        self._timed("shifting", since)

    def _set_share(self, percent: float) -> None:
        self.endpoint.green_share = percent / 100.0
        self.record["green_percent"] = float(percent)
        self._event(f"{percent:g}% of traffic on green")

    async def _watch_phase(self, name: str, seconds: float) -> None:
        since = self._phase(name)
        await self._watch(seconds)
        self._timed(name.replace("-", "_"), since)

    async def _watch(self, seconds: float) -> None:
        """Wait ``seconds`` while checking the alarms; raise RollBack when one fires."""
        deadline = time.monotonic() + seconds
        while True:
            self._check_rollback()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), min(ALARM_INTERVAL_S, remaining))
            except TimeoutError:
                pass

    def _check_rollback(self) -> None:
        if self._rollback_reason:
            raise RollBack(self._rollback_reason)
        if time.monotonic() - self._t0 > self.routing.max_execution_seconds:
            raise RollBack(
                f"the deployment exceeded its maximum execution time of {self.routing.max_execution_seconds:g} s"
            )
        if self.endpoint.green_share <= 0:
            return
        state = "OK"
        for fleet in self.endpoint.green.values():
            stats = fleet.log.window(self.alarms.window_seconds)
            if stats.requests < self.alarms.min_requests:
                state = "INSUFFICIENT_DATA" if state == "OK" else state
            reason = breached(stats, self.alarms)
            if reason:
                self.record["alarm_state"] = "ALARM"
                raise RollBack(f"alarm on green {fleet.name}: {reason}")
        self.record["alarm_state"] = state

    # --- endings -------------------------------------------------------------------------

    def _promote(self) -> dict[str, Fleet]:
        """Green becomes blue in one step (no await), so no request sees a half-switched endpoint."""
        endpoint = self.endpoint
        old = endpoint.blue
        endpoint.blue, endpoint.green, endpoint.green_config, endpoint.green_share = endpoint.green, None, None, 0.0
        if not self.creating:
            endpoint.previous_config = endpoint.config_name
        endpoint.config_name = self.config.name
        endpoint.instance_counts = {name: fleet.desired() for name, fleet in endpoint.blue.items()}
        endpoint.status = states.IN_SERVICE
        endpoint.failure_reason = ""
        endpoint.updated = time.time()
        for fleet in endpoint.blue.values():
            if not fleet.replace_failed:
                fleet.supervise()
        self.runtime.fleet_size_changed(endpoint)
        self.record["green_percent"] = 100.0
        self._event(f"endpoint config {self.config.name} in service")
        return old

    async def _retire(self, phase: str, fleets: dict[str, Fleet]) -> None:
        if not fleets:
            return
        since = self._phase(phase)
        await asyncio.gather(*(fleet.retire() for fleet in fleets.values()))
        self._timed(phase.replace("-", "_"), since)

    async def _roll_back(self, reason: str) -> None:
        self.endpoint.green_share = 0.0  # first, and at once: no new request goes to green
        self.endpoint.status = states.ROLLING_BACK
        self.record["green_percent"] = 0.0
        self._event(f"rolling back, all traffic on blue: {reason}")
        await self._discard_green(reason)

    async def _discard_green(self, reason: str) -> None:
        green = self.endpoint.green or {}
        self.endpoint.green_share = 0.0
        await self._retire("retiring-green", green)
        self.endpoint.green, self.endpoint.green_config = None, None
        if self.creating:
            self.endpoint.status = states.FAILED
            self.endpoint.failure_reason = reason
        else:
            self.endpoint.status = states.IN_SERVICE

    def _finish(self, outcome: str, reason: str) -> None:
        self.record.update(outcome=outcome, reason=reason, finished=time.time(), phase="done")
        self.record["timings"]["total"] = round(time.monotonic() - self._t0, 3)
        self._event(f"{outcome}" + (f": {reason}" if reason else ""))
