"""invoke tasks: parse options, call the library. No logic lives here.

Every task takes ``--backend local|aws`` where it touches the bucket or the
endpoint (default ``local``; ``DD_BACKEND`` overrides).
"""

from __future__ import annotations

from invoke import Collection, task

from distracted_driver.config import Settings


def _settings(backend: str | None = None) -> Settings:
    return Settings.from_env(backend=backend)


# --- data -------------------------------------------------------------------

data = Collection("data")

# --- data: sample and add ------------------------------------------------------


@task(
    name="sample",
    help={
        "out": "directory to write the Kaggle layout into (default sample-data)",
        "drivers": "number of drivers (subjects) to draw (default 26)",
        "images_per_class_driver": "images of each class for each driver (default 3)",
        "test_images": "unlabelled images under imgs/test (default 40)",
        "seed": "random seed; the same seed gives the same bytes (default 0)",
        "first_driver": "number of the first subject, e.g. 90 for p090, p091, ... (default: Kaggle's p002..p081)",
        "overwrite": "replace OUT if it already holds a sample",
    },
)
def data_sample(c, out="sample-data", drivers=26, images_per_class_driver=3, test_images=40, seed=0,
                first_driver=None, overwrite=False):
    """Draw synthetic cabin images in the exact State Farm layout (imgs/, driver_imgs_list.csv, ...)."""
    from invoke.exceptions import Exit

    from distracted_driver.data.sample import SampleError, generate_sample

    try:
        report = generate_sample(out, drivers=int(drivers), images_per_class_driver=int(images_per_class_driver),
                                 test_images=int(test_images), seed=int(seed),
                                 first_driver=None if first_driver is None else int(first_driver),
                                 overwrite=overwrite)
    except SampleError as error:
        raise Exit(str(error), code=2) from None
    print(report)


@task(
    name="add",
    help={
        "from": "directory holding a Kaggle-layout batch (imgs/train/cN/*.jpg + driver_imgs_list.csv)",
        "backend": "local or aws bucket (default local)",
    },
)
def data_add(c, from_=None, backend=None):
    """Add a labelled batch to the bucket's raw data and write a new data manifest (exit 2 if anything was refused)."""
    from invoke.exceptions import Exit

    from distracted_driver.data.ingest import IngestError, add_data
    from distracted_driver.storage import open_storage

    if not from_:
        raise Exit("say which batch to add: inv data.add --from DIR", code=2)
    settings = _settings(backend)
    try:
        report = add_data(open_storage(settings), settings, from_)
    except IngestError as error:
        raise Exit(str(error), code=2) from None
    print(report)
    if report.refused:
        raise Exit(f"{len(report.refused)} image(s) refused (listed above)", code=2)


data.add_task(data_sample)
data.add_task(data_add)

# --- data: split, convert, upload ----------------------------------------------


def _optional(value, kind):
    return None if value is None or value == "" else kind(value)


@task(
    name="split",
    help={
        "root": "Kaggle-layout root (driver_imgs_list.csv + imgs/train/cN/) or a plain cN/*.jpg tree "
        "(default .work/sample)",
        "out": "where train.lst, validation.lst and split.json go (default .work/data/split)",
        "val_drivers": "put this many whole drivers in validation",
        "val_fraction": "put whole drivers holding about this share of the images in validation (default 0.2)",
        "fold": "use fold K (0-based) of a grouped K-fold as validation",
        "folds": "number of folds for --fold (default 5)",
        "seed": "random seed for choosing drivers and shuffling train (default 0)",
    },
)
def data_split(c, root=None, out=None, val_drivers=None, val_fraction=None, fold=None, folds=5, seed=0):
    """Split the images into train/validation by driver (no driver on both sides) and write MXNet .lst files."""
    from invoke.exceptions import Exit

    from distracted_driver.data.channels import WorkDirs
    from distracted_driver.data.split import split_dataset

    dirs = WorkDirs.of(_settings())
    try:
        report = split_dataset(
            root or dirs.sample, out or dirs.lists, val_drivers=_optional(val_drivers, int),
            val_fraction=_optional(val_fraction, float), fold=_optional(fold, int), folds=int(folds), seed=int(seed),
        )
    except (ValueError, FileNotFoundError) as exc:
        raise Exit(f"split failed: {exc}", code=1)
    print(report.summary())


@task(
    name="convert",
    help={
        "lists": "directory with train.lst / validation.lst (default .work/data/split)",
        "out": "channel directory to write (default .work/data/converted)",
        "images": "image root the .lst paths are relative to (default: from the split's split.json)",
        "resize": "resize the shorter edge to this many pixels, 0 keeps the size (default 256)",
        "center_crop": "crop the centred square first",
        "quality": "JPEG quality 1-100 (default 95) or PNG compression 0-9 (default 3)",
        "encoding": ".jpg or .png (default .jpg)",
        "pass_through": "store the source files' bytes unchanged (no decode, no resize)",
        "workers": "worker processes (default: all cores)",
        "interpolation": "linear (im2rec's) or area (default linear)",
    },
)
def data_convert(c, lists=None, out=None, images=None, resize=256, center_crop=False, quality=None, encoding=".jpg",
                 pass_through=False, workers=0, interpolation="linear"):
    """Convert the .lst files to RecordIO channels (.rec + .idx + .lst) and write manifest.json (im2rec's job)."""
    from invoke.exceptions import Exit

    from distracted_driver.data.channels import WorkDirs
    from distracted_driver.data.convert import ConvertOptions, convert_lists

    dirs = WorkDirs.of(_settings())
    try:
        options = ConvertOptions(resize=int(resize), center_crop=center_crop, quality=_optional(quality, int),
                                 encoding=encoding, pass_through=pass_through, interpolation=interpolation)
        report = convert_lists(lists or dirs.lists, out or dirs.channels, options, workers=int(workers) or None,
                               image_root=images)
    except (ValueError, FileNotFoundError) as exc:
        raise Exit(f"convert failed: {exc}", code=1)
    print(report.summary())


@task(
    name="upload",
    help={
        "directory": "channel directory to upload (default .work/data/converted)",
        "prefix": "key prefix in the bucket (default data)",
        "backend": "local or aws bucket (default local)",
    },
)
def data_upload(c, directory=None, prefix=None, backend=None):
    """Copy the channels and their manifest to the bucket (<prefix>/train/, <prefix>/validation/), skipping unchanged files."""
    from invoke.exceptions import Exit

    from distracted_driver.data.channels import ChannelsError, WorkDirs, upload_channels
    from distracted_driver.storage import open_storage

    settings = _settings(backend)
    storage = open_storage(settings)
    prefix = prefix or settings.data_prefix
    try:
        report = upload_channels(storage, directory or WorkDirs.of(settings).channels, prefix)
    except ChannelsError as exc:
        raise Exit(f"upload failed: {exc}", code=1)
    print(f"{report} -> {storage.uri(prefix)}")


data.add_task(data_split)
data.add_task(data_convert)
data.add_task(data_upload)

# --- train and model ----------------------------------------------------------

train = Collection("train")


@task(
    name="run",
    help={
        "epochs": "maximum epochs (default 40; early stopping may end sooner)",
        "learning_rate": "AdamW learning rate (default 3e-3 frozen, 3e-4 fine-tuning)",
        "mini_batch_size": "images per step (default 32)",
        "image_size": "network input size (default 224)",
        "freeze_backbone": "frozen backbone: features once, head trained (default; --no-freeze-backbone fine-tunes all)",
        "augmentation": "true/false (default: on when fine-tuning; frozen features are never augmented)",
        "seed": "random seed (default 0)",
        "patience": "early stopping: epochs without a better validation log loss (default 5)",
        "extra": "more script flags as key=value,key=value (e.g. dropout=0.3,weight-decay=1e-4)",
        "resume": "name of a job that did not complete: continue it from its last checkpoint",
        "backend": "local (default); aws jobs are run with infra/sagemaker tasks",
    },
)
def train_run(c, epochs=40, learning_rate=None, mini_batch_size=32, image_size=224, freeze_backbone=True,
              augmentation=None, seed=0, patience=5, extra="", resume=None, backend=None):
    """Run scripts/train.py as a local SageMaker-style job on the bucket's channels; store and register the model."""
    from invoke.exceptions import Exit

    from distracted_driver.train.runner import TrainingJobFailed, run_local_job

    hyperparameters = {"epochs": epochs, "learning-rate": learning_rate, "mini-batch-size": mini_batch_size,
                       "image-size": image_size, "freeze-backbone": bool(freeze_backbone),
                       "augmentation": augmentation, "seed": seed, "patience": patience}
    for item in filter(None, (part.strip() for part in extra.split(","))):
        key, _, value = item.partition("=")
        hyperparameters[key.strip()] = value.strip()
    try:
        job = run_local_job(_settings(backend), hyperparameters, job_name=resume)
    except TrainingJobFailed as error:
        raise Exit(str(error), code=1) from None
    print(f"training job {job} completed")


@task(
    name="evaluate",
    help={
        "model": "training job name, 'latest' or 'live' (default latest)",
        "out": "report folder (default reports/models/<job>)",
        "backend": "local or aws bucket (default local)",
    },
)
def train_evaluate(c, model="latest", out=None, backend=None):
    """Re-evaluate a model's ONNX file on the validation channel (ONNX Runtime): metrics.json and PNG plots."""
    from distracted_driver.train.evaluate import evaluate_model, summary_lines

    job, metrics, paths = evaluate_model(_settings(backend), model, out)
    print(f"model {job}")
    for line in summary_lines(metrics):
        print(f"  {line}")
    for name, path in paths.items():
        print(f"  {name}: {path}")


train.add_task(train_run)
train.add_task(train_evaluate)

model = Collection("model")


@task(name="list", help={"json": "print the registry entries as JSON", "backend": "local or aws bucket"})
def model_list(c, json=False, backend=None):
    """List the registered model versions with their validation metrics; * marks the live one."""
    import json as jsonlib

    from distracted_driver.storage import open_storage
    from distracted_driver.train.registry import Registry

    settings = _settings(backend)
    registry = Registry(open_storage(settings), settings)
    versions, live = registry.list_versions(), registry.live()
    live_job = live["job"] if live else None
    if json:
        print(jsonlib.dumps([{**v, "live": v["job"] == live_job} for v in versions], indent=2))
        return
    if not versions:
        print("no model versions yet (inv train.run)")
        return
    print(f"  {'job':<26} {'created':<26} {'log_loss':>8} {'accuracy':>8}  mode")
    for v in versions:
        m = v["metrics"]
        print(f"{'*' if v['job'] == live_job else ' '} {v['job']:<26} {v['created']:<26} "
              f"{m['log_loss']:>8.4f} {m['accuracy']:>8.3f}  {m.get('mode') or '-'}")


@task(
    name="gate",
    help={
        "candidate": "training job name to judge, or 'latest' (default)",
        "tolerance": "how much worse than the live model's validation log loss is allowed (default 0.05)",
        "baseline_fraction": "with no live model: must be below this fraction of ln(10) (default 0.5)",
        "json": "print the decision as JSON",
        "backend": "local or aws bucket",
    },
)
def model_gate(c, candidate="latest", tolerance=None, baseline_fraction=None, json=False, backend=None):
    """Quality gate: exit 1 with the reason when the candidate is worse than the live model (or the uniform guess)."""
    import json as jsonlib

    from invoke.exceptions import Exit

    from distracted_driver.storage import open_storage
    from distracted_driver.train.registry import DEFAULT_BASELINE_FRACTION, DEFAULT_TOLERANCE, Registry, RegistryError

    settings = _settings(backend)
    try:
        decision = Registry(open_storage(settings), settings).gate(
            candidate,
            tolerance=DEFAULT_TOLERANCE if tolerance is None else float(tolerance),
            baseline_fraction=DEFAULT_BASELINE_FRACTION if baseline_fraction is None else float(baseline_fraction),
        )
    except RegistryError as error:
        raise Exit(str(error), code=2) from None
    print(jsonlib.dumps(decision.to_dict(), indent=2) if json else
          f"gate {'PASSED' if decision.passed else 'REJECTED'}: {decision.reason}")
    if not decision.passed:
        raise Exit(code=1)


@task(name="set-live", help={"job": "training job name (or 'latest')", "backend": "local or aws bucket"})
def model_set_live(c, job="latest", backend=None):
    """Point registry/live.json at a version by hand (deploy does this itself after a swap)."""
    from distracted_driver.storage import open_storage
    from distracted_driver.train.registry import Registry

    settings = _settings(backend)
    live = Registry(open_storage(settings), settings).set_live(job, by="inv model.set-live")
    print(f"live model: {live['job']}")


model.add_task(model_list)
model.add_task(model_gate)
model.add_task(model_set_live)

# --- predict / serve ----------------------------------------------------------

predict = Collection("predict")


@task(
    name="batch",
    help={
        "images": "directory of JPEG/PNG images to classify (e.g. a Kaggle imgs/test)",
        "model": "training job name, 'latest' (newest trained) or 'live' (deployed); default latest",
        "out": "CSV to write in sample_submission.csv format (default submission.csv)",
        "batch_size": "images per ONNX Runtime run (default 32)",
        "workers": "decode threads (default: all cores)",
        "backend": "local or aws bucket (default local)",
    },
)
def predict_batch(c, images, model="latest", out="submission.csv", batch_size=32, workers=0, backend=None):
    """Classify a directory of images with a trained model and write a Kaggle submission CSV."""
    from distracted_driver.serve.batch_predict import predict_directory

    result = predict_directory(_settings(backend), model, images, out, batch_size, workers or None)
    print(f"{result.summary()} -> {out}")
    for name, reason in result.failed:
        print(f"  skipped {name}: {reason}")


predict.add_task(predict_batch)

serve = Collection("serve")


@task(
    name="run",
    help={
        "model": "training job name, 'latest' or 'live' (fetched from the bucket), or an unpacked model directory",
        "port": "port on 127.0.0.1 (default 8080; 0 picks a free one)",
        "max_batch_size": "images per ONNX Runtime run (default 8)",
        "max_batch_delay_ms": "longest wait for a batch to fill (default 5)",
        "backend": "local or aws bucket (default local)",
    },
)
def serve_run(c, model="latest", port=8080, max_batch_size=8, max_batch_delay_ms=5.0, backend=None):
    """Run one model server in the foreground (SageMaker hosting contract); Ctrl-C drains and stops it."""
    import sys
    from pathlib import Path

    from distracted_driver.serve import server
    from distracted_driver.serve.model_cache import fetch_artifact

    model_dir = Path(model) if Path(model).is_dir() else fetch_artifact(_settings(backend), model).directory
    args = ["--model-dir", str(model_dir), "--port", str(port), "--max-batch-size", str(max_batch_size),
            "--max-batch-delay-ms", str(max_batch_delay_ms)]
    sys.exit(server.main(args))


serve.add_task(serve_run)

# --- api ---------------------------------------------------------------------

api = Collection("api")


@task(
    name="up",
    help={
        "port": "port on 127.0.0.1 (default: the last one used, else 8088; 0 picks a free one)",
        "rate": "usage-plan throttle: requests/s per API key (default: last used, else 200)",
        "burst": "usage-plan throttle: burst per API key (default: last used, else 400)",
        "no_key": "accept requests without an API key",
        "runtime_url": "SageMaker Runtime URL to call (default: the local endpoint's, from deploy.status)",
        "backend": "local only: the gateway fronts the local endpoint",
    },
)
def api_up(c, port=None, rate=None, burst=None, no_key=False, runtime_url=None, backend=None):
    """Start the local API Gateway (real Lambda handler in front of the endpoint) as a background daemon."""
    from distracted_driver.gateway import GatewayError, UsagePlan, start_gateway
    from distracted_driver.gateway.daemon import saved_plan

    settings = _settings(backend)
    saved = saved_plan(settings)
    plan = UsagePlan(rate=float(rate or saved.rate), burst=int(burst or saved.burst), require_key=not no_key)
    try:
        status = start_gateway(settings, runtime_url=runtime_url, port=None if port is None else int(port), plan=plan)
    except GatewayError as exc:
        from invoke.exceptions import Exit

        raise Exit(str(exc), code=1)
    print(f"API up at {status['url']} ({status.get('note') or 'started'}; pid {status['pid']}, log {status['log']})")
    print(f"  docs:    {status['docs_url']}")
    print(f"  API key: {status['api_key']}")
    print(f"  try:     curl -s -X POST {status['predict_url']} -H 'x-api-key: {status['api_key']}' "
          "-H 'Content-Type: image/jpeg' --data-binary @IMAGE.jpg")


@task(name="down", help={"backend": "local only"})
def api_down(c, backend=None):
    """Stop the local API Gateway daemon."""
    from distracted_driver.gateway import stop_gateway

    print("API stopped" if stop_gateway(_settings(backend)) else "API was not running")


@task(name="status", help={"json": "print JSON (url, api_key, endpoint, runtime_url, plan, pid)", "backend": "local only"})
def api_status(c, json=False, backend=None):
    """Where the local API is and a key to call it with."""
    import json as jsonlib

    from distracted_driver.gateway import gateway_status

    status = gateway_status(_settings(backend))
    if json:
        print(jsonlib.dumps(status, indent=2))
    elif status["running"]:
        print(f"API running at {status['url']} -> endpoint {status['endpoint']} via {status['runtime_url']}")
        print(f"  API key {status['api_key']}; throttle {status['plan']}; log {status['log']}")
    else:
        print("API not running (start it with: inv api.up)")


@task(name="key", help={"name": "a label for the key (default: cli)", "backend": "local only"})
def api_key(c, name="cli", backend=None):
    """Create a new API key and print it; the running gateway accepts it within a second."""
    from distracted_driver.gateway import create_api_key

    record = create_api_key(_settings(backend), name)
    print(record["value"])


api.add_task(api_up)
api.add_task(api_down)
api.add_task(api_status)
api.add_task(api_key)

# --- loadtest -----------------------------------------------------------------

loadtest = Collection("loadtest")


@task(
    name="run",
    default=True,
    help={
        "users": "concurrent Locust users (default 8, at most 2000)",
        "spawn_rate": "users started per second (default 4)",
        "run_time": "how long, e.g. 20s, 2m (default 20s, at most 1h)",
        "host": "API base URL (default: the local API from api.status), e.g. the AWS stage URL",
        "api_key": "x-api-key to send (default: DD_API_KEY, else the local API's key)",
        "slo": "SLO file (default load_test/slo.toml)",
        "backend": "local or aws settings",
    },
)
def loadtest_run(c, users=8, spawn_rate=4.0, run_time="20s", host=None, api_key=None, slo=None, backend=None):
    """Run Locust headless against the API; exit non-zero naming each missed SLO. Reports in reports/loadtest/."""
    from invoke.exceptions import Exit

    from distracted_driver.loadtest import SLO, LoadTestError, run_loadtest

    try:
        result = run_loadtest(_settings(backend), int(users), float(spawn_rate), run_time, host, api_key,
                              SLO.load(slo) if slo else None)
    except (LoadTestError, ValueError) as exc:
        raise Exit(str(exc), code=2)
    print(result.summary.line())
    print(f"report: {result.report_dir}")
    if result.misses:
        raise Exit("SLO missed:\n" + "\n".join(f"  {m}" for m in result.misses), code=1)
    print("all SLOs met")


@task(
    name="find-capacity",
    help={
        "start_users": "users in the first step (default 2)",
        "step_users": "users added per step (default 2)",
        "max_users": "stop after this many users (default 32)",
        "step_time": "length of each step (default 15s)",
        "safety_factor": "share of the capacity autoscaling should aim at (default 0.5)",
        "instances": "instances behind the endpoint (default: from deploy.status, else 1)",
        "host": "API base URL (default: the local API)",
        "api_key": "x-api-key to send",
        "backend": "local or aws settings",
    },
)
def loadtest_find_capacity(c, start_users=2, step_users=2, max_users=32, step_time="15s", safety_factor=0.5,
                           instances=None, host=None, api_key=None, backend=None):
    """Ramp users until failures pass 1% or p99 its SLO; report the highest sustainable RPS and autoscaling target."""
    from invoke.exceptions import Exit

    from distracted_driver.loadtest import LoadTestError, find_capacity

    try:
        result = find_capacity(_settings(backend), int(start_users), int(step_users), int(max_users), step_time,
                               host, api_key, instances=int(instances) if instances else None,
                               safety_factor=float(safety_factor))
    except (LoadTestError, ValueError) as exc:
        raise Exit(str(exc), code=2)
    print(f"stopped: {result.stop_reason}")
    print(f"highest sustainable: {result.max_rps:.1f} requests/s at {result.users_at_max} users "
          f"({result.rps_per_instance:.1f} per instance, {result.instances} instance(s))")
    print(f"autoscaling target (SageMakerVariantInvocationsPerInstance, per minute): "
          f"{result.rps_per_instance:.1f} x {result.safety_factor} x 60 = {result.target_invocations_per_instance:.0f}")
    print(f"report: {result.report_dir}")


loadtest.add_task(loadtest_run)
loadtest.add_task(loadtest_find_capacity)

# --- top level --------------------------------------------------------------


@task
def demo(c):
    """Run the main job end to end on generated sample data and leave the stack up."""
    from distracted_driver import demo as demo_job

    demo_job.run(_settings())


@task
def down(c):
    """Stop every local server the demo started."""
    from distracted_driver import demo as demo_job

    demo_job.down(_settings())


ns = Collection(demo, down, data, train, model, predict, serve, api, loadtest)
