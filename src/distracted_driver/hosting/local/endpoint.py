"""An endpoint inside the runtime: its config in service, its fleets, and where traffic goes.

Blue is the endpoint config in service (one fleet per variant). During an
update, green holds the new config's fleets and ``green_share`` says which part
of the traffic goes to them; it stays 0 until green has passed its health and
smoke checks. A request picks blue or green by that share, then a variant by
the variant weights (or the one it asks for with
``X-Amzn-SageMaker-Target-Variant``), then the least busy instance.
"""

from __future__ import annotations

import random
import time

from distracted_driver.hosting.base import ScalingPolicy
from distracted_driver.hosting.local.autoscaling import ScalerState
from distracted_driver.hosting.local.fleet import Fleet
from distracted_driver.hosting.local.instances import Instance
from distracted_driver.hosting.local.state import ACTIVITIES, HISTORY, EndpointConfigRecord
from distracted_driver.serve.capture import CaptureConfig, CaptureWriter

CREATING, IN_SERVICE, UPDATING, ROLLING_BACK, DELETING, FAILED, SYSTEM_UPDATING, OUT_OF_SERVICE = (
    "Creating",
    "InService",
    "Updating",
    "RollingBack",
    "Deleting",
    "Failed",
    "SystemUpdating",
    "OutOfService",
)


class Endpoint:
    def __init__(self, name: str, record: dict | None = None):
        record = record or {}
        self.name = name
        self.status: str = record.get("status", CREATING)
        self.config_name: str | None = record.get("config")
        self.previous_config: str | None = record.get("previous_config")
        self.created: float = record.get("created", time.time())
        self.updated: float = record.get("updated", self.created)
        self.failure_reason: str = record.get("failure_reason", "")
        self.instance_counts: dict[str, int] = dict(record.get("instance_counts", {}))
        self.autoscaling: dict[str, ScalingPolicy] = {
            variant: ScalingPolicy(**policy) for variant, policy in record.get("autoscaling", {}).items()
        }
        self.deployments: list[dict] = list(record.get("deployments", []))
        self.scaling_activities: list[dict] = list(record.get("scaling_activities", []))
        # Data capture belongs to the endpoint here (kept across swaps, rollbacks and restarts); on AWS it is
        # part of each endpoint config, which the deploy copies into the next one: the same behaviour.
        capture = record.get("data_capture")
        self.data_capture: CaptureConfig | None = CaptureConfig.from_json(capture) if capture else None
        self.capture_writer: CaptureWriter | None = None  # the runtime starts it while capture is on
        self.retired_capture: list = []  # the final counts of writers replaced since the runtime started
        self.blue: dict[str, Fleet] = {}
        self.green: dict[str, Fleet] | None = None
        self.green_config: EndpointConfigRecord | None = None
        self.green_share = 0.0
        self.deployment = None  # the bluegreen.Deployment in progress, if any
        self.scalers: dict[str, ScalerState] = {}
        self.scaling_decisions: dict[str, dict] = {}
        self.scaling_busy: set[str] = set()

    # --- routing ---------------------------------------------------------------------

    def variant_names(self) -> set[str]:
        names = set(self.blue)
        if self.green and self.green_share > 0:
            names |= set(self.green)
        return names

    def _fleet_sets(self) -> list[dict[str, Fleet]]:
        """Blue and green in the order this request should try them."""
        if self.green and self.green_share > 0:
            if random.random() < self.green_share:
                return [self.green, self.blue]
            return [self.blue, self.green]
        return [self.blue]

    def route(self, target_variant: str | None, tried: set[Instance]) -> tuple[Fleet, Instance] | None:
        """The fleet and instance for the next attempt of a request, or None when nothing is in service."""
        sets = self._fleet_sets()
        for fleets in sets:
            fleet = fleets.get(target_variant) if target_variant else self._weighted_variant(fleets, tried)
            instance = fleet.pick(tried) if fleet else None
            if instance:
                return fleet, instance
        return None

    @staticmethod
    def _weighted_variant(fleets: dict[str, Fleet], tried: set[Instance]) -> Fleet | None:
        ready = [f for f in fleets.values() if f.has_capacity(tried) and f.variant.weight > 0]
        if not ready:
            return None
        return random.choices(ready, weights=[f.variant.weight for f in ready])[0]

    # --- what is true now ---------------------------------------------------------------

    def instances_in_service(self) -> int:
        """Instances that take this endpoint's traffic now (blue's; green gets traffic only through blue's place)."""
        return sum(len(fleet.in_service()) for fleet in self.blue.values())

    def availability(self) -> tuple[str, str]:
        """(status, reason): the recorded status, except OutOfService while it says InService and nothing serves.

        The recorded status stays as it is (a restart restores what it says); this
        is what callers are told.
        """
        if self.status == IN_SERVICE and not self.instances_in_service():
            causes = [f"{fleet.name}: {fleet.last_failure}" for fleet in self.blue.values() if fleet.last_failure]
            return OUT_OF_SERVICE, "no instance is in service" + (f" ({'; '.join(causes)})" if causes else "")
        if self.status == FAILED:
            return FAILED, self.failure_reason
        if self.status == SYSTEM_UPDATING:
            return SYSTEM_UPDATING, "the runtime (re)started: the endpoint's instances are starting"
        return self.status, ""

    # --- records ---------------------------------------------------------------------

    def all_fleets(self) -> list[Fleet]:
        return list(self.blue.values()) + list((self.green or {}).values())

    def add_deployment(self, record: dict) -> None:
        self.deployments = [d for d in self.deployments if d["id"] != record["id"]][-(HISTORY - 1) :] + [record]

    def add_activity(self, activity: dict) -> None:
        self.scaling_activities = (self.scaling_activities + [activity])[-ACTIVITIES:]

    def to_record(self) -> dict:
        """What is persisted: enough to bring the endpoint back after a restart."""
        return {
            "name": self.name,
            "status": self.status,
            "config": self.config_name,
            "previous_config": self.previous_config,
            "created": self.created,
            "updated": self.updated,
            "failure_reason": self.failure_reason,
            "instance_counts": self.instance_counts,
            "autoscaling": {variant: vars(policy) for variant, policy in self.autoscaling.items()},
            "deployments": self.deployments,
            "scaling_activities": self.scaling_activities,
            "data_capture": self.data_capture.to_json() if self.data_capture else None,
        }

    def to_json(self) -> dict:
        """The live view for ``status``: the record plus fleets, instances and traffic."""
        view = self.to_record()
        view["recorded_status"] = self.status
        view["status"], view["status_reason"] = self.availability()
        view["instances_in_service"] = self.instances_in_service()
        view["variants"] = []
        for variant, fleet in self.blue.items():
            entry = {
                "name": variant,
                "weight": fleet.variant.weight,
                "desired_instances": self.instance_counts.get(variant, fleet.desired()),
                "fleets": [fleet.to_json("blue", 100.0 * (1 - self.green_share))],
                "autoscaling": vars(self.autoscaling[variant]) if variant in self.autoscaling else None,
                "last_scaling_decision": self.scaling_decisions.get(variant),
            }
            if self.green and variant in self.green:
                entry["fleets"].append(self.green[variant].to_json("green", 100.0 * self.green_share))
            view["variants"].append(entry)
        if self.green:
            for variant, fleet in self.green.items():
                if variant not in self.blue:
                    view["variants"].append(
                        {
                            "name": variant,
                            "weight": fleet.variant.weight,
                            "fleets": [fleet.to_json("green", 100.0 * self.green_share)],
                        }
                    )
        view["deployment_in_progress"] = self.deployment.record if self.deployment else None
        if self.data_capture:
            view["data_capture"] = {
                **self.data_capture.to_json(),
                "destination_uri": self.data_capture.destination_uri,
                "stats": self.capture_stats(),
            }
        return view

    def capture_stats(self) -> dict:
        """The capture writer's counts (records accepted, dropped, written, lost, queued; files written)."""
        writers = self.retired_capture + ([self.capture_writer.stats()] if self.capture_writer else [])
        totals = {"accepted": 0, "dropped": 0, "written": 0, "lost": 0, "files": 0, "queued": 0}
        for stats in writers:
            for name, value in stats.to_json().items():
                totals[name] += value
        return totals
