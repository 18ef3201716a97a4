"""Train/validation split by driver, written as MXNet ``.lst`` files.

The same driver photographed in many frames makes a random split leak: the
model recognises the person and the seat rather than the behaviour. So with
``driver_imgs_list.csv`` whole drivers go to validation (a fraction, a count,
or one fold of a grouped K-fold). A plain ``class/*.jpg`` tree has no driver
column and is split at random, with a warning.

Outputs in ``out_dir``: ``train.lst``, ``validation.lst`` (``index<TAB>label<TAB>path``,
path relative to the image root) and ``split.json`` (where the images are, how
the split was made, the drivers and the class balance of each side).
"""

from __future__ import annotations

import csv
import hashlib
import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from distracted_driver.data import layout
from distracted_driver.fsutil import atomic_path, write_json_atomic
from distracted_driver.hashing import sha256_file

log = logging.getLogger(__name__)

SPLITS = ("train", "validation")
SPLIT_INFO = "split.json"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
DEFAULT_VAL_FRACTION = 0.2
LEAKAGE_WARNING = (
    "no driver_imgs_list.csv: images are split at random, so one subject can appear on both "
    "sides and validation scores will be optimistic (leakage between train and validation)"
)


@dataclass(frozen=True)
class ListEntry:
    """One line of a ``.lst`` file, plus the driver when it is known."""

    index: int
    label: float
    path: str  # relative to the image root, '/'-separated
    driver: str | None = None


@dataclass
class SplitReport:
    out_dir: Path
    image_root: Path
    strategy: str
    train: list[ListEntry]
    validation: list[ListEntry]
    drivers: dict[str, list[str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def class_balance(self) -> dict[str, dict[str, int]]:
        return {name: class_histogram(getattr(self, name)) for name in SPLITS}

    def summary(self) -> str:
        lines = [f"split ({self.strategy}) -> {self.out_dir}"]
        balance = self.class_balance()
        for name in SPLITS:
            entries = getattr(self, name)
            drivers = self.drivers.get(name)
            who = f", {len(drivers)} drivers" if drivers is not None else ""
            counts = " ".join(f"{c}:{n}" for c, n in balance[name].items())
            lines.append(f"  {name:<10} {len(entries):>6} images{who}  [{counts}]")
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


# --- reading the sources ---------------------------------------------------------


def read_driver_list(root: str | Path) -> list[ListEntry]:
    """Entries of ``driver_imgs_list.csv`` (``subject,classname,img``), indexed in file order."""
    csv_path = Path(root) / layout.DRIVER_LIST
    entries: list[ListEntry] = []
    seen: dict[str, str] = {}
    with open(csv_path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = tuple(next(reader, ()))
        if header != layout.DRIVER_LIST_HEADER:
            raise ValueError(f"{csv_path}: header {header} is not {layout.DRIVER_LIST_HEADER}")
        for number, row in enumerate(reader, 2):
            if not row:
                continue
            if len(row) != 3 or not all(cell.strip() for cell in row):
                raise ValueError(f"{csv_path}:{number}: expected subject,classname,img, got {row}")
            subject, classname, image = (cell.strip() for cell in row)
            try:
                label = layout.class_index(classname)
            except ValueError as error:
                raise ValueError(f"{csv_path}:{number}: {error}") from None
            path = f"{classname}/{image}"
            if path in seen:
                if seen[path] != subject:
                    raise ValueError(f"{csv_path}:{number}: {path} listed for {seen[path]} and {subject}")
                continue
            seen[path] = subject
            entries.append(ListEntry(len(entries), float(label), path, subject))
    if not entries:
        raise ValueError(f"{csv_path} lists no images")
    return entries


def scan_class_tree(image_root: str | Path) -> list[ListEntry]:
    """Entries of a ``c0..c9/*.jpg`` tree, sorted by class then file name."""
    image_root = Path(image_root)
    entries: list[ListEntry] = []
    folders = sorted(p for p in image_root.iterdir() if p.is_dir())
    for folder in folders:
        try:
            label = layout.class_index(folder.name)
        except ValueError as error:
            raise ValueError(f"{folder}: {error}") from None
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
                entries.append(ListEntry(len(entries), float(label), f"{folder.name}/{path.name}"))
    if not entries:
        raise ValueError(f"{image_root} holds no class folders with images")
    return entries


def locate_images(root: str | Path) -> tuple[Path, Path | None]:
    """(image root, driver list or None) for a Kaggle-layout root or a plain class tree."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory")
    driver_list = root / layout.DRIVER_LIST
    kaggle_images = root / layout.TRAIN_DIR
    if driver_list.is_file():
        return kaggle_images, driver_list
    return (kaggle_images if kaggle_images.is_dir() else root), None


# --- choosing the validation side ---------------------------------------------


def grouped_folds(groups: dict[str, int], folds: int, seed: int) -> list[list[str]]:
    """Deal groups (name → image count) into ``folds`` folds of similar image counts."""
    if folds < 2 or folds > len(groups):
        raise ValueError(f"--folds must be between 2 and the number of drivers ({len(groups)}), not {folds}")
    names = sorted(groups)
    random.Random(seed).shuffle(names)
    # Largest first into the lightest fold; the shuffle breaks ties differently per seed.
    names.sort(key=lambda name: -groups[name])
    buckets: list[list[str]] = [[] for _ in range(folds)]
    sizes = [0] * folds
    for name in names:
        lightest = min(range(folds), key=lambda i: (sizes[i], len(buckets[i])))
        buckets[lightest].append(name)
        sizes[lightest] += groups[name]
    return [sorted(bucket) for bucket in buckets]


def stable_order(groups, seed: int) -> list[str]:
    """Group names in an order set by a hash of (seed, name).

    A seeded shuffle would re-deal every driver when one is added; ranking each
    driver by its own hash keeps the others' order, so validation stays nearly the
    same drivers as data grows and the gate keeps comparing models on unseen drivers.
    """
    return sorted(groups, key=lambda name: hashlib.sha256(f"{seed}:{name}".encode()).digest())


def choose_validation(
    groups: dict[str, int],
    *,
    val_count: int | None,
    val_fraction: float | None,
    fold: int | None,
    folds: int,
    seed: int,
) -> tuple[set[str], str]:
    """Names of the groups that go to validation, and a description of how they were chosen."""
    if sum(option is not None for option in (val_count, val_fraction, fold)) > 1:
        raise ValueError("give only one of --val-drivers, --val-fraction and --fold")
    if fold is not None:
        if not 0 <= fold < folds:
            raise ValueError(f"--fold must be between 0 and {folds - 1}, not {fold}")
        return set(grouped_folds(groups, folds, seed)[fold]), f"fold {fold} of {folds}"
    names = stable_order(groups, seed)
    if val_count is not None:
        if not 1 <= val_count < len(names):
            raise ValueError(f"--val-drivers must be between 1 and {len(names) - 1}, not {val_count}")
        return set(names[:val_count]), f"{val_count} groups"
    fraction = DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"--val-fraction must be between 0 and 1, not {fraction}")
    if len(names) < 2:
        raise ValueError("need at least two groups to split")
    target = fraction * sum(groups.values())
    chosen: list[str] = []
    total = 0
    for name in names[:-1]:  # keep at least one group for training
        if chosen and total + groups[name] / 2 > target:
            break
        chosen.append(name)
        total += groups[name]
    return set(chosen), f"fraction {fraction:g}"


def check_disjoint(train: list[ListEntry], validation: list[ListEntry]) -> None:
    """Raise if a driver or an image is on both sides."""
    shared_drivers = {e.driver for e in train if e.driver} & {e.driver for e in validation if e.driver}
    if shared_drivers:
        raise ValueError(f"drivers on both sides of the split: {sorted(shared_drivers)}")
    shared_paths = {e.path for e in train} & {e.path for e in validation}
    if shared_paths:
        raise ValueError(f"{len(shared_paths)} images on both sides of the split, e.g. {sorted(shared_paths)[0]}")


# --- the split ---------------------------------------------------------------------


def split_dataset(
    root: str | Path,
    out_dir: str | Path,
    *,
    val_drivers: int | None = None,
    val_fraction: float | None = None,
    fold: int | None = None,
    folds: int = 5,
    seed: int = 0,
) -> SplitReport:
    """Split a Kaggle-layout root (or a plain class tree) and write the ``.lst`` files and ``split.json``."""
    image_root, driver_list = locate_images(root)
    options = dict(val_count=val_drivers, val_fraction=val_fraction, fold=fold, folds=folds, seed=seed)
    warnings: list[str] = []
    if driver_list is not None:
        entries = read_driver_list(root)
        groups = Counter(e.driver for e in entries)
        chosen, how = choose_validation(groups, **options)
        validation = [e for e in entries if e.driver in chosen]
        strategy = f"by driver, {how.replace('groups', 'drivers')}, seed {seed}"
    else:
        if val_drivers is not None:
            raise ValueError("--val-drivers needs driver_imgs_list.csv; use --val-fraction for a plain class tree")
        entries = scan_class_tree(image_root)
        warnings.append(LEAKAGE_WARNING)
        log.warning(LEAKAGE_WARNING)
        groups = Counter(e.path for e in entries)  # every image is its own group
        chosen, how = choose_validation(groups, **options)
        validation = [e for e in entries if e.path in chosen]
        strategy = f"at random by image, {how.replace('groups', 'images')}, seed {seed}"
    validation_paths = {e.path for e in validation}
    train = [e for e in entries if e.path not in validation_paths]
    check_disjoint(train, validation)
    # Training reads in file order: shuffle it once here (as im2rec does); validation stays sorted.
    random.Random(seed).shuffle(train)

    report = SplitReport(Path(out_dir), image_root, strategy, train, validation, warnings=warnings)
    if driver_list is not None:
        report.drivers = {name: sorted({e.driver for e in getattr(report, name)}) for name in SPLITS}
    for name in SPLITS:
        if not getattr(report, name):
            raise ValueError(f"the {name} side of the split is empty")
        missing = [c for c, n in class_histogram(getattr(report, name)).items() if n == 0]
        if missing:
            report.warnings.append(f"{name} has no images of {', '.join(missing)}")
    _write_outputs(report, driver_list)
    return report


def class_histogram(entries: list[ListEntry]) -> dict[str, int]:
    counts = Counter(int(e.label) for e in entries)
    return {c: counts.get(i, 0) for i, c in enumerate(layout.CLASSES)}


def _write_outputs(report: SplitReport, driver_list: Path | None) -> None:
    for name in SPLITS:
        write_lst(report.out_dir / f"{name}.lst", getattr(report, name))
    write_json_atomic(
        report.out_dir / SPLIT_INFO,
        {
            "image_root": str(report.image_root.resolve()),
            "driver_list_sha256": sha256_file(driver_list) if driver_list else None,
            "strategy": report.strategy,
            "drivers": report.drivers or None,
            "class_balance": report.class_balance(),
            "counts": {name: len(getattr(report, name)) for name in SPLITS},
            "warnings": report.warnings,
        },
    )


# --- .lst files ----------------------------------------------------------------------


def format_lst_line(entry: ListEntry) -> str:
    # im2rec writes labels with '%f'; keep its spelling so the files diff cleanly.
    return f"{entry.index}\t{entry.label:f}\t{entry.path}\n"


def write_lst(path: str | Path, entries: list[ListEntry]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        handle.writelines(format_lst_line(e) for e in entries)


def read_lst(path: str | Path) -> list[ListEntry]:
    """Entries of a ``.lst`` file; the label is the first label column (as im2rec packs it)."""
    entries = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            fields = [f.strip() for f in line.rstrip("\n").split("\t")]
            try:
                if len(fields) < 3:
                    raise ValueError("fewer than 3 fields")
                entries.append(ListEntry(int(fields[0]), float(fields[1]), fields[-1]))
            except ValueError as error:
                message = f"not 'index<TAB>label<TAB>path' ({error}): {line.rstrip()!r}"
                raise ValueError(f"{path}:{number}: {message}") from None
    return entries
