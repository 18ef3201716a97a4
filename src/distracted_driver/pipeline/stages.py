"""The stages of one pipeline run, each a thin wrapper over the library function that does the work.

Every stage says

- ``inputs``: what its result depends on, cheaply (hashes, options, the
  previous stages' outputs), without doing the work;
- ``still_valid``: whether cached outputs for the same inputs are still where
  they say (a local directory, a bucket object, a registered model);
- ``run``: the work, returning its outputs;
- ``not_needed``: a reason to skip it outright in this run (e.g. no smoke test
  when the candidate was already live);
- ``verdict``: whether the run ends after it (the gate rejects, a deploy rolls back).

Heavy modules (torch in the training job, ONNX Runtime, the hosting client,
Locust) are imported inside ``run``, so deciding that nothing needs doing
stays fast.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from distracted_driver.hashing import sha256_file
from distracted_driver.pipeline import outcomes
from distracted_driver.pipeline.context import RunContext, StageFailed, Stop
from distracted_driver.pipeline.fingerprint import convert_code_version, training_code_version
from distracted_driver.pipeline.records import DONE, SKIPPED, StageRecord

DATA_MANIFEST = "manifest.json"
SPLIT_OPTIONS = ("val_drivers", "val_fraction", "fold", "folds", "seed")
MARKER = ".listing-sha256"  # in the materialized raw directory: which listing it holds, once complete
METRICS_AGREEMENT = 1e-3  # the bucket's artifact must reproduce its recorded validation log loss this closely


def _work(context: RunContext, name: str) -> Path:
    return context.settings.work_dir / "pipeline" / name


class Stage:
    name = ""

    def not_needed(self, context: RunContext) -> str:
        return ""

    def inputs(self, context: RunContext) -> dict:
        raise NotImplementedError

    def still_valid(self, context: RunContext, outputs: dict) -> bool:
        return True

    def run(self, context: RunContext, record: StageRecord) -> dict:
        raise NotImplementedError

    def verdict(self, context: RunContext, record: StageRecord) -> Stop | None:
        return None

    def cacheable(self, outputs: dict) -> bool:
        return True


# --- raw data -> channels -> bucket -----------------------------------------------------


def raw_manifest(context: RunContext) -> dict:
    """The newest raw-data manifest (what ``inv data.add`` wrote last)."""

    def read():
        from distracted_driver.data.ingest import latest_manifest  # loaded when the stage runs

        manifest = latest_manifest(context.storage, context.settings)
        if manifest is None:
            raise StageFailed(
                f"no raw data under {context.storage.uri(context.settings.raw_prefix + '/')}: "
                "add some with `inv data.add --from DIR`"
            )
        context.record.raw_manifest = manifest["id"]
        return manifest

    return context.memo("raw_manifest", read)


class Materialize(Stage):
    """Copy the newest raw manifest's images out of the bucket into a Kaggle-layout directory."""

    name = "materialize"

    def not_needed(self, context):
        if context.reusable(CONVERT) is not None:
            return "the converted channels for this raw data are reusable"
        return ""

    def inputs(self, context):
        return {"raw_listing_sha256": raw_manifest(context)["listing_sha256"]}

    def still_valid(self, context, outputs):
        directory = Path(outputs["directory"])
        marker = directory / MARKER
        return marker.is_file() and marker.read_text() == outputs["raw_listing_sha256"]

    def run(self, context, record):
        from distracted_driver.data.ingest import materialize_raw  # loaded when the stage runs

        manifest = raw_manifest(context)
        directory = _work(context, "raw")
        (directory / MARKER).unlink(missing_ok=True)
        materialize_raw(context.storage, context.settings, directory, manifest, progress=context.progress)
        (directory / MARKER).write_text(manifest["listing_sha256"])
        counts = manifest["counts"]
        return {
            "directory": str(directory),
            "raw_listing_sha256": manifest["listing_sha256"],
            "manifest": manifest["id"],
            "images": counts["images"],
            "drivers": counts["subjects"],
            "summary": f"raw manifest {manifest['id']}: {counts['images']} images of {counts['subjects']} drivers",
        }


def convert_settings(context: RunContext) -> tuple[dict, dict]:
    """(split options, converter options) with every default filled in, as the convert stage hashes them."""
    from distracted_driver.data.convert import ConvertOptions  # loaded when the stage runs

    given = dict(context.options.convert)
    split = {key: given.pop(key, None) for key in SPLIT_OPTIONS}
    split["folds"] = split["folds"] or 5
    split["seed"] = split["seed"] or 0
    if split["val_drivers"] is None and split["fold"] is None and split["val_fraction"] is None:
        from distracted_driver.data.split import DEFAULT_VAL_FRACTION  # loaded when the stage runs

        split["val_fraction"] = DEFAULT_VAL_FRACTION
    try:
        converter = ConvertOptions(**given).to_dict()
    except (TypeError, ValueError) as error:
        raise StageFailed(f"convert options: {error}") from None
    return split, converter


def bucket_holds_channels(context: RunContext, data_sha256: str) -> bool:
    """The bucket's data prefix holds exactly the channels whose manifest hashes to ``data_sha256``."""

    def check():
        prefix = context.settings.data_prefix.strip("/")
        if context.storage.checksum(f"{prefix}/{DATA_MANIFEST}") != data_sha256:
            return False
        manifest = json.loads(context.storage.get_bytes(f"{prefix}/{DATA_MANIFEST}"))
        return all(
            context.storage.checksum(f"{prefix}/{name}") == info["sha256"]
            for split in manifest["splits"].values()
            for name, info in split["files"].items()
        )

    return context.memo(f"bucket_holds:{data_sha256}", check)


def local_channels(directory: Path, data_sha256: str) -> bool:
    """The channel directory is complete and is the one ``data_sha256`` names."""
    from distracted_driver.data.channels import ChannelsError, verify_channels  # loaded when the stage runs

    manifest = directory / DATA_MANIFEST
    if not manifest.is_file() or sha256_file(manifest) != data_sha256:
        return False
    try:
        verify_channels(directory)
    except ChannelsError:
        return False
    return True


class Convert(Stage):
    """Split by driver and write the RecordIO channels with their manifest."""

    name = "convert"

    def inputs(self, context):
        split, converter = convert_settings(context)
        return {
            "raw_listing_sha256": raw_manifest(context)["listing_sha256"],
            "split": split,
            "convert": converter,
            "code": convert_code_version(),
        }

    def still_valid(self, context, outputs):
        return local_channels(Path(outputs["directory"]), outputs["data_sha256"]) or bucket_holds_channels(
            context, outputs["data_sha256"]
        )

    def run(self, context, record):
        from distracted_driver.data.channels import build_channels  # loaded when the stage runs
        from distracted_driver.data.convert import ConvertOptions  # loaded when the stage runs

        source = context.outputs.get("materialize", {}).get("directory")
        if not source:
            raise StageFailed("the raw data was not materialized")
        split, converter = convert_settings(context)
        options = ConvertOptions(**converter)
        directory = _work(context, "channels")
        try:
            report = build_channels(source, directory, options=options, progress=context.progress, **split)
        except (ValueError, FileNotFoundError) as error:
            raise StageFailed(str(error)) from None
        counts = report.convert.manifest["counts"]
        return {
            "directory": str(directory),
            "data_sha256": sha256_file(directory / DATA_MANIFEST),
            "counts": counts,
            "drivers": {name: len(d or []) for name, d in (report.split.drivers or {}).items()},
            "summary": ", ".join(
                f"{name} {c['written']} images ({c['skipped']} skipped)" for name, c in counts.items()
            ),
        }


class Upload(Stage):
    """Put the channels under the bucket's data prefix (unchanged files are not sent again)."""

    name = "upload"

    def inputs(self, context):
        return {
            "data_sha256": context.outputs["convert"]["data_sha256"],
            "destination": context.storage.uri(context.settings.data_prefix),
        }

    def still_valid(self, context, outputs):
        return bucket_holds_channels(context, outputs["data_sha256"])

    def run(self, context, record):
        from distracted_driver.data.channels import ChannelsError, upload_channels  # loaded when the stage runs

        data_sha256 = context.outputs["convert"]["data_sha256"]
        directory = Path(context.outputs["convert"]["directory"])
        if bucket_holds_channels(context, data_sha256):
            return {"data_sha256": data_sha256, "uploaded": 0, "bytes": 0, "summary": "already in the bucket"}
        if not local_channels(directory, data_sha256):
            raise StageFailed(
                f"the channels of data {data_sha256[:12]} are neither in {directory} nor in the bucket; "
                "run again without --resume to convert them"
            )
        try:
            report = upload_channels(context.storage, directory, context.settings.data_prefix)
        except ChannelsError as error:
            raise StageFailed(str(error)) from None
        return {
            "data_sha256": data_sha256,
            "uploaded": len(report.uploaded),
            "bytes": report.bytes,
            "summary": str(report),
        }


# --- model: train, evaluate, gate -------------------------------------------------------------


def normalized_hyperparameters(hyperparameters: dict) -> dict[str, str]:
    """Flags as the training script receives them: ``learning_rate=0.01`` and ``learning-rate="0.01"`` are one."""
    normalized = {}
    for key, value in hyperparameters.items():
        if value is None:
            continue
        normalized[key.strip().replace("_", "-")] = str(value).lower() if isinstance(value, bool) else str(value)
    return dict(sorted(normalized.items()))


def live_version(context: RunContext) -> str | None:
    """The version the registry records as serving traffic."""

    def read():
        from distracted_driver.model.registry import Registry  # loaded when the stage runs

        live = Registry(context.storage, context.settings).live()
        return live["job"] if live else None

    return context.memo("live", read)


class Train(Stage):
    """A training job on the bucket's channels; the artifact is stored and registered."""

    name = "train"

    def inputs(self, context):
        inputs = {
            "data_sha256": context.outputs["upload"]["data_sha256"],
            "code": training_code_version(),
            "hyperparameters": normalized_hyperparameters(context.options.hyperparameters),
            "int8_tolerance": context.settings.int8_tolerance,  # the job picks the served precision with it
            "backend": context.settings.backend,
        }
        if context.settings.backend == "aws":
            inputs["algorithm"] = context.options.algorithm
        return inputs

    def still_valid(self, context, outputs):
        from distracted_driver.model.registry import Registry, RegistryError  # loaded when the stage runs

        try:
            Registry(context.storage, context.settings).get(outputs["job"])
        except RegistryError:
            return False
        return context.storage.checksum(outputs["artifact_key"]) == outputs["artifact_sha256"]

    def run(self, context, record):
        from distracted_driver.model.registry import Registry  # loaded when the stage runs
        from distracted_driver.train import TrainingFailed, open_trainer  # loaded when the stage runs

        hyperparameters = normalized_hyperparameters(context.options.hyperparameters)
        trainer = open_trainer(context.settings, algorithm=context.options.algorithm, stream=context.stream)
        try:
            job = trainer.train(hyperparameters)
        except TrainingFailed as error:  # its reason (and, locally, its log) is in the message
            raise StageFailed(str(error)) from None
        entry = Registry(context.storage, context.settings).get(job)
        metrics = entry["metrics"]
        return {
            "job": job,
            "artifact_key": entry["artifact_key"],
            "artifact_sha256": entry["artifact_sha256"],
            "log_loss": metrics["log_loss"],
            "accuracy": metrics["accuracy"],
            "summary": f"model {job}: validation log loss {metrics['log_loss']:.4f}, "
            f"accuracy {metrics['accuracy']:.3f}",
        }

    def verdict(self, context, record):
        context.record.model_version = record.outputs["job"]
        return None


class Evaluate(Stage):
    """Re-evaluate the stored artifact on the bucket's validation channel: it must reproduce its own metrics."""

    name = "evaluate"

    def inputs(self, context):
        return {
            "artifact_sha256": context.outputs["train"]["artifact_sha256"],
            "data_sha256": context.outputs["upload"]["data_sha256"],
        }

    def run(self, context, record):
        from distracted_driver.model.evaluate import evaluate_model  # loaded when the stage runs

        job = context.outputs["train"]["job"]
        report_dir = context.settings.root / "reports" / "pipeline" / context.record.run_id / "evaluate"
        _, metrics, paths = evaluate_model(context.settings, job, report_dir, progress=context.progress)
        recorded = context.outputs["train"]["log_loss"]
        if abs(metrics["log_loss"] - recorded) > METRICS_AGREEMENT:
            raise StageFailed(
                f"the artifact of {job} in the bucket scores log loss {metrics['log_loss']:.4f} "
                f"on the validation channel, not the {recorded:.4f} it was registered with"
            )
        return {
            "job": job,
            "log_loss": metrics["log_loss"],
            "accuracy": metrics["accuracy"],
            "examples": metrics["examples"],
            "report": {k: str(p) for k, p in paths.items()},
            "summary": f"log loss {metrics['log_loss']:.4f}, accuracy {metrics['accuracy']:.3f} "
            f"on {metrics['examples']} validation images",
        }


class Gate(Stage):
    """May the candidate replace the live model? The gate scores both served models itself (``train.gate``)."""

    name = "gate"

    def not_needed(self, context):
        candidate = context.outputs["train"]["job"]
        if live_version(context) == candidate:
            return f"{candidate} is the live model already"
        return ""

    def inputs(self, context):
        from distracted_driver.train.gate import DEFAULT_TOLERANCE  # loaded when the stage runs

        tolerance = context.options.gate_tolerance
        return {
            "candidate": context.outputs["train"]["job"],
            "candidate_sha256": context.outputs["train"]["artifact_sha256"],
            "data_sha256": context.outputs["upload"]["data_sha256"],
            "live": live_version(context),
            "tolerance": DEFAULT_TOLERANCE if tolerance is None else tolerance,
            "int8_tolerance": context.settings.int8_tolerance,
            "smoke_per_class": context.options.smoke_images,
        }

    def still_valid(self, context, outputs):
        key = outputs.get("record_key")  # the deploy stage's clearance reads the stored decision
        return bool(key) and context.storage.exists(key)

    def run(self, context, record):
        from distracted_driver.model.artifact import ArtifactError  # loaded when the stage runs
        from distracted_driver.model.registry import Registry, RegistryError  # loaded when the stage runs
        from distracted_driver.train.gate import GateError, judge  # loaded when the stage runs

        inputs = record.inputs
        try:
            decision = judge(
                Registry(context.storage, context.settings),
                inputs["candidate"],
                tolerance=inputs["tolerance"],
                smoke_per_class=inputs["smoke_per_class"],
                int8_tolerance=inputs.get("int8_tolerance"),
            )
        except (GateError, RegistryError, ArtifactError) as error:
            raise StageFailed(str(error)) from None
        if decision.data_manifest_sha256 != inputs["data_sha256"]:
            raise StageFailed(
                f"the bucket's data changed while the gate scored (data {decision.data_manifest_sha256[:12]}, "
                f"expected {inputs['data_sha256'][:12]}): run again"
            )
        return {
            "passed": decision.passed,
            "reason": decision.reason,
            "candidate_log_loss": decision.candidate_log_loss,
            "candidate_accuracy": decision.candidate_accuracy,
            "live_log_loss": decision.live_log_loss,
            "live_accuracy": decision.live_accuracy,
            "examples": decision.examples,
            "smoke_images": decision.smoke_images,
            "record_key": decision.record_key,
            "precision": decision.precision,
            "fp32_log_loss": decision.fp32_log_loss,
            "int8_log_loss": decision.int8_log_loss,
            "summary": f"{'passed' if decision.passed else 'rejected'}: {decision.reason}"
            + (f"; {decision.precision_line()}" if decision.precision else ""),
        }

    def verdict(self, context, record):
        if record.outputs.get("passed", True):
            return None
        reason = f"gate: {record.outputs['reason']}"
        if record.status == DONE:
            return Stop(outcomes.REJECTED_BY_GATE, reason)
        return Stop(
            outcomes.NOTHING_TO_DO,
            f"inputs unchanged since run {record.source_run}, whose candidate the gate rejected ({reason})",
        )


# --- serving: deploy, smoke, load test -----------------------------------------------------


def hosting(context: RunContext):
    def open_it():
        from distracted_driver.hosting import open_hosting  # loaded when the stage runs

        return open_hosting(context.settings)

    return context.memo("hosting", open_it)


class Deploy(Stage):
    """Blue/green update of the endpoint to the candidate (canary by default), rolled back on alarms."""

    name = "deploy"

    def not_needed(self, context):
        candidate = context.outputs["train"]["job"]
        if live_version(context) == candidate and hosting(context).status().serves(candidate):
            return f"{candidate} is live and in service"
        return ""

    def inputs(self, context):
        train = context.outputs["train"]
        return {
            "candidate": train["job"],
            "artifact_key": train["artifact_key"],
            "artifact_sha256": train["artifact_sha256"],
            "routing": self.routing(context).__dict__,
            "alarms": self.alarms(context).__dict__,
            "capture_percent": context.options.capture_percent,
        }

    @staticmethod
    def routing(context: RunContext):
        from distracted_driver.hosting import TrafficRouting  # loaded when the stage runs

        o = context.options
        return TrafficRouting(
            strategy=o.strategy,
            canary_percent=o.canary_percent,
            linear_step_percent=o.linear_step_percent,
            wait_seconds=o.wait_seconds,
            bake_seconds=o.bake_seconds,
        )

    @staticmethod
    def alarms(context: RunContext):
        from distracted_driver.hosting import AlarmThresholds  # loaded when the stage runs

        o = context.options
        return AlarmThresholds(max_error_rate=o.alarm_max_error_rate, max_p99_latency_ms=o.alarm_max_p99_ms)

    def cacheable(self, outputs):
        return False  # a deploy changes the endpoint; whether it holds is asked of the endpoint each time

    def run(self, context, record):
        from distracted_driver.hosting import ModelSpec  # loaded when the stage runs
        from distracted_driver.model.registry import Registry  # loaded when the stage runs
        from distracted_driver.train.gate import NotCleared, clearance  # loaded when the stage runs

        train = context.outputs["train"]
        try:
            clearance(Registry(context.storage, context.settings), train["job"])
        except NotCleared as refusal:
            raise StageFailed(f"not deployed: {refusal}") from None
        result = hosting(context).deploy(
            ModelSpec(train["job"], train["artifact_key"]),
            self.routing(context),
            self.alarms(context),
            capture_percent=context.options.capture_percent,
        )
        context.memo_clear("live")
        outputs = {
            "outcome": result.outcome,
            "live_version": result.live_version,
            "reason": result.reason,
            "timings": result.timings,
            "strategy": context.options.strategy,
            "summary": f"{result.outcome}: {result.reason or result.live_version}",
        }
        if result.outcome == "failed":
            raise StageFailed(f"deploy of {train['job']} failed: {result.reason}")
        return outputs

    def verdict(self, context, record):
        if record.outputs.get("outcome") == "rolled-back":
            return Stop(
                outcomes.ROLLED_BACK,
                f"deploy rolled back to {record.outputs['live_version']}: {record.outputs['reason']}",
            )
        return None


def _api_target(context: RunContext) -> tuple[str, str | None] | None:
    """(API base URL, key) when the REST API is known: ``--api-url``, else the local gateway if it is up."""
    if context.options.api_url:
        return context.options.api_url.rstrip("/"), os.environ.get("DD_API_KEY")
    if context.settings.backend != "local":
        return None
    from distracted_driver.gateway import gateway_status  # loaded when the stage runs

    status = gateway_status(context.settings)
    return (status["url"], status["api_key"]) if status["running"] else None


class Smoke(Stage):
    """The gate's smoke images through the endpoint: the gate's probabilities, else a rollback.

    Also through the REST API when it is up, which must answer with the candidate's version.
    """

    name = "smoke"

    def not_needed(self, context):
        if context.record.stage("deploy").status == SKIPPED:
            return "the endpoint did not change in this run"
        return ""

    def inputs(self, context):
        # The smoke set is the gate's for this version and validation set (the gate may be skipped when the
        # candidate is live already; the record it wrote before is the one used).
        return {
            "version": context.outputs["train"]["job"],
            "data_sha256": context.outputs["upload"]["data_sha256"],
            "api": context.options.api_url or ("local" if context.settings.backend == "local" else ""),
        }

    def run(self, context, record):
        from distracted_driver.hosting.release import verify_endpoint  # loaded when the stage runs
        from distracted_driver.model.registry import Registry  # loaded when the stage runs
        from distracted_driver.train.gate import smoke_set_for  # loaded when the stage runs

        version = context.outputs["train"]["job"]
        smoke = smoke_set_for(Registry(context.storage, context.settings), version)
        if smoke is None:
            raise StageFailed(f"no smoke set: the gate never scored {version}")
        check = verify_endpoint(hosting(context), smoke)
        problems = list(check.problems)
        api = _api_target(context)
        if api is not None:
            problems += _smoke_api(api, list(smoke.images), version)
        if problems:
            return self._roll_back(context, version, problems)
        where = "endpoint and REST API" if api else "endpoint"
        return {
            "version": version,
            "requests": check.requests * (2 if api else 1),
            "api": api[0] if api else None,
            "max_difference": check.max_difference,
            "accuracy": check.accuracy,
            "gate_accuracy": check.expected_accuracy,
            "seconds": check.seconds,
            "summary": f"{check.summary()}; through the {where}",
        }

    def _roll_back(self, context, version: str, problems: list[str]) -> dict:
        reason = "; ".join(problems[:3])
        try:
            result = hosting(context).rollback()
        except Exception as error:  # noqa: BLE001
            raise StageFailed(f"smoke test of {version} failed ({reason}) and so did the rollback: {error}") from None
        return {
            "version": version,
            "passed": False,
            "rolled_back_to": result.live_version,
            "reason": reason,
            "summary": f"failed, rolled back to {result.live_version}: {reason}",
        }

    def cacheable(self, outputs):
        return False  # it runs after every deploy: a passed smoke test says nothing about the next deploy

    def verdict(self, context, record):
        if record.outputs.get("passed", True):
            return None
        context.memo_clear("live")
        return Stop(
            outcomes.ROLLED_BACK,
            f"smoke test of {record.outputs['version']} failed "
            f"({record.outputs['reason']}); rolled back to {record.outputs['rolled_back_to']}",
        )


def _smoke_api(api: tuple[str, str | None], images: list[bytes], version: str) -> list[str]:
    from distracted_driver.gateway.client import predict_image  # loaded when the stage runs
    from distracted_driver.train.gate import SmokeSet  # loaded when the stage runs

    url, key = api
    problems = []
    for number, image in enumerate(images):
        try:
            status, answer = predict_image(f"{url}/predict", key, image, SmokeSet.content_type(image))
        except (OSError, ValueError) as error:
            problems.append(f"image {number}: REST API request failed: {error}")
            continue
        if status != 200:
            problems.append(f"image {number}: REST API answered {status}: {answer.get('message', answer)}")
        elif answer.get("model_version") != version:
            problems.append(
                f"image {number}: the REST API answered with model {answer.get('model_version')}, not {version}"
            )
    return problems


class LoadTest(Stage):
    """A bounded Locust run against the REST API, gated by the SLO file."""

    name = "loadtest"

    def not_needed(self, context):
        return "disabled (--load-seconds 0)" if context.options.load_seconds <= 0 else ""

    def inputs(self, context):
        from distracted_driver.loadtest.run import SLO_FILE  # loaded when the stage runs

        o = context.options
        return {
            "version": context.outputs["train"]["job"],
            "users": o.load_users,
            "spawn_rate": o.load_spawn_rate,
            "seconds": o.load_seconds,
            "slo_sha256": sha256_file(SLO_FILE) if SLO_FILE.is_file() else None,
            "api": o.api_url or ("local" if context.settings.backend == "local" else ""),
        }

    def run(self, context, record):
        from distracted_driver.loadtest import LoadTestError, run_loadtest  # loaded when the stage runs

        o = context.options
        api = _api_target(context)
        if api is None and context.settings.backend == "local":
            api = self._start_local_api(context)
        if api is None:
            raise StageFailed("no REST API to load: give --api-url (the API Gateway stage URL)")
        report_dir = context.settings.root / "reports" / "pipeline" / context.record.run_id / "loadtest"
        report_dir.mkdir(parents=True, exist_ok=True)
        try:
            result = run_loadtest(
                context.settings,
                o.load_users,
                o.load_spawn_rate,
                f"{o.load_seconds:g}s",
                host=api[0],
                api_key=api[1],
                report_dir=report_dir,
            )
        except LoadTestError as error:
            raise StageFailed(f"load test could not run: {error}") from None
        line = result.summary.line()
        if result.misses:
            raise StageFailed(
                f"SLO missed: {'; '.join(result.misses)} ({line}); "
                f"model {context.outputs['train']['job']} stays live, "
                "`inv deploy.rollback` puts the previous one back"
            )
        return {"summary": line, "report": str(result.report_dir), **result.summary.to_dict()}

    @staticmethod
    def _start_local_api(context: RunContext) -> tuple[str, str | None]:
        from distracted_driver.gateway import GatewayError, start_gateway  # loaded when the stage runs

        try:
            status = start_gateway(context.settings)
        except GatewayError as error:
            raise StageFailed(f"cannot start the local REST API: {error}") from None
        context.log(f"loadtest: started the local REST API at {status['url']}")
        return status["url"], status["api_key"]


MATERIALIZE, CONVERT, UPLOAD = Materialize(), Convert(), Upload()
TRAIN, EVALUATE, GATE = Train(), Evaluate(), Gate()
DEPLOY, SMOKE, LOADTEST = Deploy(), Smoke(), LoadTest()
PIPELINE = (MATERIALIZE, CONVERT, UPLOAD, TRAIN, EVALUATE, GATE, DEPLOY, SMOKE, LOADTEST)

assert tuple(stage.name for stage in PIPELINE) == outcomes.STAGES
