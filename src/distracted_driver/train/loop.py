"""The two training loops: frozen backbone (features computed once, head trained) and full fine-tuning.

Both evaluate on the validation channel after every epoch, stop early when the
validation log loss has not improved for ``patience`` epochs, keep the weights
of the best epoch, and write a checkpoint every epoch from which a rerun resumes.
"""

from __future__ import annotations

import copy
import math
import pickle
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn
from tqdm import tqdm

from distracted_driver.data.channel import Record, decoded_batches
from distracted_driver.data.imaging import Preprocessing
from distracted_driver.fsutil import atomic_path
from distracted_driver.hashing import sha256_file, sha256_json
from distracted_driver.model.artifact import INPUT_NAME
from distracted_driver.model.evaluate import log_loss
from distracted_driver.train import model as model_module
from distracted_driver.train.augment import Augmentation, augmenter
from distracted_driver.train.export import export_backbone_onnx
from distracted_driver.train.model import EfficientNetLite0, build_model, pretrained_weights_path

MODES = ("frozen", "finetune")
# Images per backbone run when computing features on a CPU: the ONNX Runtime backbone takes about
# 30 MB of activations per image at 224, so batch 32 held 1 GB more than batch 8, at the same speed.
CPU_FEATURE_BATCH = 8
Log = Callable[[str], None]


@dataclass(frozen=True)
class TrainConfig:
    mode: str = "frozen"
    epochs: int = 40
    learning_rate: float = 3e-3
    batch_size: int = 32
    image_size: int = 224
    jpeg_dct_scaling: bool = True  # decode JPEGs at a reduced DCT scale (imaging.decode_image)
    augmentation: bool = False
    seed: int = 0
    patience: int = 5
    weight_decay: float = 1e-4
    dropout: float = 0.2
    pretrained: bool = True
    workers: int = 0  # decoding threads; 0 = all cores
    device: str = "cpu"

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {self.mode!r}")
        for name in ("epochs", "batch_size", "image_size", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if not self.learning_rate > 0:
            raise ValueError("learning rate must be positive")

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing(input_size=self.image_size, jpeg_dct_scaling=self.jpeg_dct_scaling)

    def fingerprint(self, data: str) -> str:
        """What a checkpoint must match to be resumed: everything that shapes training, and the data."""
        settings = {k: v for k, v in asdict(self).items() if k not in ("epochs", "patience", "workers", "device")}
        return sha256_json({"config": settings, "data": data})


@dataclass
class TrainResult:
    model: EfficientNetLite0  # best epoch's weights, on the CPU, in eval mode
    history: list[dict]
    best_epoch: int
    stopped_early: bool
    resumed_from_epoch: int
    timings: dict = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    feature_images_per_second: float | None = None


class EarlyStopping:
    def __init__(self, patience: int):
        self.patience = patience
        self.best = math.inf
        self.best_epoch = 0
        self.bad_epochs = 0

    def update(self, epoch: int, loss: float) -> bool:
        """Record an epoch's validation loss; True when it is the best so far."""
        if loss < self.best:
            self.best, self.best_epoch, self.bad_epochs = loss, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch, self.bad_epochs = state["best"], state["best_epoch"], state["bad_epochs"]


class CheckpointMismatch(RuntimeError):
    """The checkpoint on disk belongs to a run with other settings or other data, or is not ours at all."""


def load_tensors(path: Path):
    """A file written by ``torch.save`` of tensors and plain containers, and nothing else.

    ``weights_only=True`` unpickles only tensors, numbers, strings and containers, so a
    planted file cannot run code; anything else raises ``pickle.UnpicklingError``.
    """
    return torch.load(path, map_location="cpu", weights_only=True)


class Checkpoints:
    """One file, rewritten atomically after every epoch."""

    def __init__(self, directory: str | Path, fingerprint: str):
        self.path = Path(directory) / "checkpoint.pt"
        self.fingerprint = fingerprint

    def save(self, state: dict) -> None:
        with atomic_path(self.path) as tmp:
            torch.save({**state, "fingerprint": self.fingerprint}, tmp)

    def load(self) -> dict | None:
        if not self.path.is_file():
            return None
        try:
            state = load_tensors(self.path)
        except pickle.UnpicklingError as error:
            raise CheckpointMismatch(
                f"{self.path} holds more than tensors and plain values, so it is not loaded "
                f"({str(error).splitlines()[0]}); remove it or pass --resume false"
            ) from None
        if not isinstance(state, dict) or state.get("fingerprint") != self.fingerprint:
            raise CheckpointMismatch(
                f"{self.path} was written by a run with other hyperparameters or data; "
                "remove it or pass --resume false to start over"
            )
        return state


def _epoch_line(stats: dict, epochs: int, improved: bool) -> str:
    return (
        f"epoch {stats['epoch']}/{epochs} train_loss={stats['train_loss']:.4f} train_acc={stats['train_accuracy']:.3f} "
        f"val_log_loss={stats['val_log_loss']:.4f} val_acc={stats['val_accuracy']:.3f} "
        f"images/s={stats['images_per_second']:.1f} time={stats['seconds']:.1f}s{' *best' if improved else ''}"
    )


def _run_epochs(config: TrainConfig, checkpoints: Checkpoints, log: Log, modules: dict, run_epoch, validate):
    """The shared epoch loop: train, validate, keep the best, checkpoint, stop early.

    ``modules`` are the stateful objects to checkpoint (name → object with state_dict);
    ``modules["model"]`` is the one whose best weights are kept.
    """
    stopper = EarlyStopping(config.patience)
    history: list[dict] = []
    best_state = copy.deepcopy(modules["model"].state_dict())
    start_epoch = 1
    saved = checkpoints.load()
    if saved is not None:
        for name, module in modules.items():
            module.load_state_dict(saved[name])
        stopper.load_state_dict(saved["early_stopping"])
        history, best_state, start_epoch = saved["history"], saved["best_state"], saved["epoch"] + 1
        log(f"resuming from the checkpoint of epoch {saved['epoch']} in {checkpoints.path}")
    resumed_from = start_epoch - 1
    for epoch in range(start_epoch, config.epochs + 1):
        if stopper.should_stop:
            break
        torch.manual_seed(config.seed * 100_003 + epoch)  # dropout and drop-path: the same after a resume
        started = time.perf_counter()
        train_loss, train_accuracy, images = run_epoch(epoch)
        seconds = time.perf_counter() - started
        val_labels, val_probabilities = validate()
        stats = {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_accuracy": train_accuracy,
            "val_log_loss": log_loss(val_labels, val_probabilities),
            "val_accuracy": float((val_probabilities.argmax(1) == val_labels).mean()),
            "images_per_second": images / seconds if seconds > 0 else 0.0,
            "seconds": seconds,
        }
        improved = stopper.update(epoch, stats["val_log_loss"])
        if improved:
            best_state = copy.deepcopy(modules["model"].state_dict())
        history.append(stats)
        state = {name: module.state_dict() for name, module in modules.items()}
        checkpoints.save(
            {
                **state,
                "early_stopping": stopper.state_dict(),
                "history": history,
                "best_state": best_state,
                "epoch": epoch,
            }
        )
        log(_epoch_line(stats, config.epochs, improved))
        if stopper.should_stop:
            log(
                f"early stop: validation log loss has not improved for {config.patience} epochs "
                f"(best {stopper.best:.4f} at epoch {stopper.best_epoch})"
            )
    modules["model"].load_state_dict(best_state)
    return history, stopper, resumed_from


# --- frozen backbone -----------------------------------------------------------


class FeatureExtractor:
    """The frozen backbone as a function ``images [N,3,S,S] → features [N,1280]``.

    On CPUs it runs the backbone exported to ONNX under ONNX Runtime, which is
    several times faster there than eager PyTorch for these depthwise
    convolutions (the export matches PyTorch to ~1e-6); on a GPU, PyTorch.
    The export happens on first use, so a run served from the cache skips it.
    """

    def __init__(self, model: EfficientNetLite0, config: TrainConfig):
        self.model, self.config = model.eval(), config
        self._session = None
        self._scratch = None

    def __call__(self, images: np.ndarray) -> torch.Tensor:
        if self.config.device != "cpu":
            device = torch.device(self.config.device)
            self.model.to(device)
            # Features are computed once and kept: full float32, no TF32 shortcuts in the convolutions.
            with torch.inference_mode(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
                x = torch.from_numpy(images).to(device).contiguous(memory_format=torch.channels_last)
                return self.model.features(x).float().cpu()
        if self._session is None:
            self._session = self._onnx_session()
        return torch.from_numpy(self._session.run(None, {INPUT_NAME: images})[0])

    def _onnx_session(self):
        self._scratch = tempfile.TemporaryDirectory(prefix="dd-backbone-")
        path = export_backbone_onnx(self.model, Path(self._scratch.name) / "backbone.onnx", self.config.image_size)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def extract_features(
    extractor: FeatureExtractor, records: list[Record], config: TrainConfig, desc: str
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, str]], float]:
    """Pooled backbone features of every decodable record: ``(features, labels, failed, images/s)``.

    Images are decoded a batch at a time; only their features stay (5 KB an image), written
    into one tensor sized for the whole channel, so the peak is that tensor and a batch.
    """
    features, labels, failed, done = None, torch.empty(len(records), dtype=torch.int64), [], 0
    batch_size = config.batch_size if config.device != "cpu" else min(config.batch_size, CPU_FEATURE_BATCH)
    started = time.perf_counter()
    with tqdm(total=len(records), unit="img", desc=f"features {desc}", mininterval=2) as bar:
        for batch in decoded_batches(records, config.preprocessing, batch_size, config.workers or None):
            failed.extend(batch.failed)
            if len(batch.labels):
                batch_features = extractor(batch.images)
                if features is None:
                    features = torch.empty((len(records), *batch_features.shape[1:]), dtype=batch_features.dtype)
                features[done : done + len(batch.labels)] = batch_features
                labels[done : done + len(batch.labels)] = torch.from_numpy(batch.labels)
                done += len(batch.labels)
            bar.update(len(batch.labels) + len(batch.failed))
    seconds = time.perf_counter() - started
    if features is None:
        raise ValueError(f"no decodable image in the {desc} channel")
    if done < len(records):  # some were skipped: keep only the rows written (a copy, so the rest is freed)
        features, labels = features[:done].clone(), labels[:done].clone()
    return features, labels, failed, len(records) / seconds if seconds > 0 else 0.0


def _feature_cache_key(config: TrainConfig, data: str) -> str:
    return sha256_json(
        {
            "data": data,
            "preprocessing": config.preprocessing.to_dict(),
            "weights": Path(pretrained_weights_path()).name if config.pretrained else f"random-{config.seed}",
            "model_code": sha256_file(model_module.__file__),
        }
    )[:24]


def cached_features(extractor, records, config, desc, cache_dir, data_fingerprint, log):
    """Features from the cache when the same data, preprocessing and weights were seen before."""
    path = Path(cache_dir) / f"{desc}-{_feature_cache_key(config, data_fingerprint)}.pt" if cache_dir else None
    if path is not None and path.is_file():
        try:
            saved = load_tensors(path)
            log(f"features {desc}: {len(saved['labels'])} from cache {path}")
            return saved["features"], saved["labels"], [tuple(f) for f in saved["failed"]], None
        except (pickle.UnpicklingError, KeyError, TypeError, RuntimeError) as error:
            log(f"features {desc}: ignoring the unreadable cache file {path} ({str(error).splitlines()[0]})")
    x, y, failed, rate = extract_features(extractor, records, config, desc)
    log(f"features {desc}: {len(y)} images at {rate:.1f} images/s, {len(failed)} skipped")
    if path is not None:
        with atomic_path(path) as tmp:
            torch.save({"features": x, "labels": y, "failed": failed}, tmp)
    return x, y, failed, rate


def train_frozen(
    config: TrainConfig,
    train_records: list[Record],
    val_records: list[Record],
    checkpoints: Checkpoints,
    data_fingerprint: str,
    cache_dir: str | Path | None = None,
    log: Log = print,
) -> TrainResult:
    """Backbone features computed once (cached), then only the new head is trained on them."""
    timings = {}
    started = time.perf_counter()
    model = build_model(pretrained=config.pretrained, seed=config.seed)
    extractor = FeatureExtractor(model, config)
    x_train, y_train, failed_train, rate = cached_features(
        extractor, train_records, config, "train", cache_dir, data_fingerprint, log
    )
    x_val, y_val, failed_val, _ = cached_features(
        extractor, val_records, config, "validation", cache_dir, data_fingerprint, log
    )
    model.to("cpu")
    timings["features_seconds"] = time.perf_counter() - started

    head = model._fc
    dropout = nn.Dropout(config.dropout)
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    generator = torch.Generator()

    def run_epoch(epoch: int):
        head.train()
        generator.manual_seed(config.seed * 100_003 + epoch)
        order = torch.randperm(len(y_train), generator=generator)
        total_loss, correct = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            idx = order[start : start + config.batch_size]
            logits = head(dropout(x_train[idx]))
            loss = nn.functional.cross_entropy(logits, y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(idx)
            correct += (logits.argmax(1) == y_train[idx]).sum().item()
        return total_loss / len(order), correct / len(order), len(order)

    def validate():
        head.eval()
        with torch.inference_mode():
            return y_val.numpy(), torch.softmax(head(x_val), 1).numpy()

    started = time.perf_counter()
    threads = torch.get_num_threads()
    # The head's steps are tiny: one thread avoids paying for thread hand-offs on every one.
    torch.set_num_threads(1)
    try:
        history, stopper, resumed_from = _run_epochs(
            config, checkpoints, log, {"model": head, "optimizer": optimizer}, run_epoch, validate
        )
    finally:
        torch.set_num_threads(threads)
    timings["train_seconds"] = time.perf_counter() - started
    return TrainResult(
        model.eval(),
        history,
        stopper.best_epoch,
        stopper.should_stop,
        resumed_from,
        timings,
        failed_train + failed_val,
        rate,
    )


# --- full fine-tuning ------------------------------------------------------------


def _predict(model, records, config, device) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    labels, probabilities = [], []
    with torch.inference_mode():
        for batch in decoded_batches(records, config.preprocessing, config.batch_size, config.workers or None):
            if len(batch.labels):
                x = torch.from_numpy(batch.images).to(device).contiguous(memory_format=torch.channels_last)
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    logits = model(x)
                probabilities.append(torch.softmax(logits.float(), 1).cpu().numpy())
                labels.append(batch.labels)
    return np.concatenate(labels), np.concatenate(probabilities)


def train_finetune(
    config: TrainConfig,
    train_records: list[Record],
    val_records: list[Record],
    checkpoints: Checkpoints,
    log: Log = print,
) -> TrainResult:
    """Every weight trained, with augmentation when asked; AdamW with a one-epoch warm-up then cosine decay."""
    device = torch.device(config.device)
    model = build_model(pretrained=config.pretrained, seed=config.seed).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(train_records) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs

    def schedule(step: int) -> float:
        if step < steps_per_epoch:
            return (step + 1) / steps_per_epoch
        return 0.5 * (1 + math.cos(math.pi * (step - steps_per_epoch) / max(1, total_steps - steps_per_epoch)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    augmentation = Augmentation() if config.augmentation else None
    skipped: set[tuple[str, str]] = set()

    def run_epoch(epoch: int):
        model.train()
        order = np.random.default_rng((config.seed, epoch)).permutation(len(train_records))
        shuffled = [train_records[i] for i in order]
        augment = augmenter(augmentation, config.seed, epoch) if augmentation else None
        total_loss, correct, seen = 0.0, 0, 0
        batches = decoded_batches(shuffled, config.preprocessing, config.batch_size, config.workers or None, augment)
        for batch in tqdm(batches, total=steps_per_epoch, unit="batch", desc=f"epoch {epoch}", mininterval=5):
            skipped.update(batch.failed)
            if not len(batch.labels):
                continue
            x = (
                torch.from_numpy(batch.images)
                .to(device, non_blocking=True)
                .contiguous(memory_format=torch.channels_last)
            )
            y = torch.from_numpy(batch.labels).to(device)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = model(x)
                loss = nn.functional.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
        return total_loss / max(seen, 1), correct / max(seen, 1), seen

    started = time.perf_counter()
    history, stopper, resumed_from = _run_epochs(
        config,
        checkpoints,
        log,
        {"model": model, "optimizer": optimizer, "scheduler": scheduler},
        run_epoch,
        lambda: _predict(model, val_records, config, device),
    )
    model = model.to("cpu", memory_format=torch.contiguous_format).eval()
    return TrainResult(
        model,
        history,
        stopper.best_epoch,
        stopper.should_stop,
        resumed_from,
        {"train_seconds": time.perf_counter() - started},
        sorted(skipped),
    )
