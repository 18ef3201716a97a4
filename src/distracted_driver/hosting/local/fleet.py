"""A fleet: the instances serving one production variant of one endpoint config.

During a blue/green update an endpoint has two fleets per variant, blue (the
config in service) and green (the new one). A fleet starts its instances,
picks the least busy one for each request, checks their health, replaces one
that dies (once the fleet is in service), and grows or shrinks on request.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable

import psutil

from distracted_driver.hosting.local.instances import FAILED, IN_SERVICE, STARTING, STOPPED, Instance, InstanceError
from distracted_driver.hosting.local.requestlog import RequestLog
from distracted_driver.hosting.local.state import ModelRecord, RuntimePaths, VariantConfig
from distracted_driver.logs import LogRotation

log = logging.getLogger("distracted_driver.hosting.runtime")

HEALTH_INTERVAL_S = 2.0
HEALTH_TIMEOUT_S = 5.0  # generous: a saturated server still answers /ping, just later
PING_FAILURES_BEFORE_REPLACE = 3
MAX_REPLACE_BACKOFF_S = 30.0


class Fleet:
    def __init__(
        self,
        endpoint: str,
        config_name: str,
        variant: VariantConfig,
        model: ModelRecord,
        paths: RuntimePaths,
        new_instance_id: Callable[[], str],
        on_change: Callable[[], None],
        log_rotation: LogRotation = LogRotation(),
    ):
        self.endpoint = endpoint
        self.config_name = config_name
        self.variant = variant
        self.model = model
        self.paths = paths
        self.new_instance_id = new_instance_id
        self.on_change = on_change  # the runtime persists its state and wakes waiting requests
        self.log_rotation = log_rotation
        self.last_failure = ""  # what last took an instance out or kept a replacement from starting
        self.instances: list[Instance] = []
        self.log = RequestLog()
        self.replace_failed = False  # turned on once the fleet is in service
        self.retired = False
        self._round_robin = itertools.count()
        self._tasks: set[asyncio.Task] = set()
        self._replace_backoff = 1.0

    @property
    def name(self) -> str:
        return self.variant.variant_name

    def in_service(self) -> list[Instance]:
        return [i for i in self.instances if i.state == IN_SERVICE]

    def desired(self) -> int:
        return len([i for i in self.instances if i.state in (STARTING, IN_SERVICE)])

    def has_capacity(self, exclude: set[Instance] = frozenset()) -> bool:
        return any(i not in exclude for i in self.in_service())

    def pick(self, exclude: set[Instance] = frozenset()) -> Instance | None:
        """Least outstanding requests; ties go round robin so an idle fleet still spreads load."""
        candidates = [i for i in self.in_service() if i not in exclude]
        if not candidates:
            return None
        fewest = min(i.outstanding for i in candidates)
        tied = [i for i in candidates if i.outstanding == fewest]
        return tied[next(self._round_robin) % len(tied)]

    # --- starting and stopping ------------------------------------------------------

    async def start(self, count: int) -> None:
        """Start ``count`` instances at once; if any fails to come up, stop them all and raise."""
        new = [self._new_instance() for _ in range(count)]
        results = await asyncio.gather(*(self._launch(i) for i in new), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            await asyncio.gather(*(i.stop(drain_timeout_s=0) for i in new))
            self.instances = [i for i in self.instances if i not in new]
            self.on_change()
            raise failures[0]

    async def bring_up(self, count: int, running: list[tuple[dict, psutil.Process]]) -> None:
        """``count`` instances in service: first the ``running`` servers a previous runtime left (each taken
        over if it answers ``/ping``, else killed), then new ones for what is missing."""
        taken = 0
        for record, process in running:
            if taken == count:  # more than the fleet needs now
                with contextlib.suppress(psutil.Error):
                    process.kill()
                continue
            instance = self._new_instance(record["instance"])
            if await instance.take_over(process, record["port"]):  # (it kills one that does not answer)
                taken += 1
                self._spawn_task(self._watch(instance))
            else:
                self.instances = [i for i in self.instances if i is not instance]
        self.on_change()
        if count > taken:
            await self.start(count - taken)

    def _new_instance(self, instance_id: str | None = None) -> Instance:
        instance_id = instance_id or self.new_instance_id()
        instance = Instance(
            instance_id,
            self.model.name,
            self.model.model_dir,
            self.paths.instance_logs / f"{instance_id}.log",
            owner=str(self.paths.root),
            threads=self.variant.instance_threads,
            log_rotation=self.log_rotation,
        )
        self.instances.append(instance)
        return instance

    async def _launch(self, instance: Instance) -> None:
        try:
            await instance.start(self.variant.startup_timeout_seconds)
        finally:
            self.on_change()
        self._spawn_task(self._watch(instance))
        log.info("%s/%s: instance %s in service (%s)", self.endpoint, self.name, instance.id, self.config_name)

    async def scale_to(self, count: int) -> None:
        """Grow or shrink to ``count`` instances; shrinking drains the newest ones first."""
        current = [i for i in self.instances if i.state in (STARTING, IN_SERVICE)]
        if count > len(current):
            await self.start(count - len(current))
        elif count < len(current):
            surplus = sorted(current, key=lambda i: i.started)[count:]
            await asyncio.gather(*(self._stop(i) for i in surplus))

    async def retire(self) -> None:
        """Stop every instance (each drained first); the fleet takes no more traffic."""
        self.retired = True
        self.replace_failed = False
        await asyncio.gather(*(self._stop(i) for i in self.instances))
        for task in list(self._tasks):
            task.cancel()
        self.instances = [i for i in self.instances if i.state != STOPPED]
        self.on_change()

    async def _stop(self, instance: Instance) -> None:
        await instance.stop()
        self.instances = [i for i in self.instances if i is not instance]
        self.on_change()

    # --- supervision ----------------------------------------------------------------

    def supervise(self) -> None:
        """From now on, health-check instances and replace any that dies."""
        self.replace_failed = True
        self._spawn_task(self._health_loop())

    def _spawn_task(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch(self, instance: Instance) -> None:
        code = await instance.process.wait()
        if instance.state in (IN_SERVICE, STARTING):
            instance.state = FAILED
            instance.failure = f"exited with code {code} while in service"
            self.last_failure = f"instance {instance.id} {instance.failure}"
            log.warning(
                "%s/%s: instance %s (pid %s) exited with code %s; out of rotation",
                self.endpoint,
                self.name,
                instance.id,
                instance.pid,
                code,
            )
            await instance.kill()
            self.on_change()
            if self.replace_failed and not self.retired:
                await self._replace(instance)

    def mark_suspect(self, instance: Instance) -> None:
        """The router could not reach it: check it now rather than at the next health round."""
        if instance.state == IN_SERVICE:
            self._spawn_task(self._check(instance))

    async def _health_loop(self) -> None:
        while not self.retired:
            await asyncio.sleep(HEALTH_INTERVAL_S)
            await asyncio.gather(*(self._check(i) for i in self.in_service()))

    async def _check(self, instance: Instance) -> None:
        if await instance.ping(HEALTH_TIMEOUT_S):
            instance.ping_failures = 0
            return
        instance.ping_failures += 1
        if instance.ping_failures >= PING_FAILURES_BEFORE_REPLACE and instance.state == IN_SERVICE:
            log.warning(
                "%s/%s: instance %s failed %d health checks; replacing it",
                self.endpoint,
                self.name,
                instance.id,
                instance.ping_failures,
            )
            instance.process.kill()  # _watch sees the exit and replaces it

    async def _replace(self, dead: Instance) -> None:
        self.instances = [i for i in self.instances if i is not dead]
        while self.replace_failed and not self.retired:
            replacement = self._new_instance()
            try:
                await self._launch(replacement)
                self._replace_backoff = 1.0
                self.last_failure = ""
                log.info("%s/%s: instance %s replaces %s", self.endpoint, self.name, replacement.id, dead.id)
                return
            except InstanceError as error:
                self.instances = [i for i in self.instances if i is not replacement]
                self.last_failure = f"its replacement {replacement.id} did not start: {str(error).splitlines()[0]}"
                log.error(
                    "%s/%s: replacement failed (%s); retrying in %g s",
                    self.endpoint,
                    self.name,
                    error,
                    self._replace_backoff,
                )
                await asyncio.sleep(self._replace_backoff)
                self._replace_backoff = min(MAX_REPLACE_BACKOFF_S, self._replace_backoff * 2)

    def to_json(self, role: str, traffic_percent: float, window_seconds: float = 60.0) -> dict:
        return {
            "role": role,
            "config": self.config_name,
            "model_version": self.model.name,
            "traffic_percent": round(traffic_percent, 2),
            "instances": [i.to_json() for i in self.instances],
            "requests": self.log.total,
            "errors": self.log.total_errors,
            "last_failure": self.last_failure or None,
            "last_window": self.log.window(window_seconds).to_json(),
        }
