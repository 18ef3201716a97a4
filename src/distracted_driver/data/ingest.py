"""Adding labelled data to the bucket's raw prefix, and reading it back.

The raw prefix holds the Kaggle layout as keys::

    raw/imgs/train/c3/img_123.jpg
    raw/driver_imgs_list.csv            every image's subject and class
    raw/manifests/000001.json           one per successful ``add_data``

A manifest lists every raw image (key, sha256, subject, class) as of that
addition, with counts and the hash of the whole listing, so the newest
manifest is the identity of the data: the pipeline watches
``raw/manifests/`` and converts from the listing of the newest one.

Manifests are numbered; a new one is created with an exclusive write, so two
additions racing each other cannot both succeed on the same parent (the loser
is told to run again, and finds its images already uploaded). Images go up
first and the manifest last: whoever sees a manifest finds all its images.
"""

from __future__ import annotations

import csv
import io
import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from tqdm import tqdm

from distracted_driver.config import Settings
from distracted_driver.data.imaging import ImageError, decode_image
from distracted_driver.data.layout import CLASSES, DRIVER_LIST, DRIVER_LIST_HEADER, TRAIN_DIR
from distracted_driver.fsutil import write_bytes_atomic
from distracted_driver.hashing import code_version, sha256_bytes, sha256_file, sha256_json
from distracted_driver.storage import Storage

MANIFESTS = "manifests"
_MANIFEST_NAME = re.compile(r"^(\d{6})\.json$")
_SUBJECT = re.compile(r"^p\d+$")
_IMAGE_NAME = re.compile(r"^[A-Za-z0-9_.-]+\.(jpe?g|png)$", re.IGNORECASE)
_MAX_LISTED = 20  # problems shown in one error message
# A batch exported for review (``inv monitor.export``) has these columns after Kaggle's three: what the
# model answered. Its rows with no subject yet are not reviewed: they are counted and left out.
REVIEW_COLUMNS = ("model_class", "model_confidence", "event_id", "captured_at")
REVIEW_HEADER = (*DRIVER_LIST_HEADER, *REVIEW_COLUMNS)
_WORKERS = 8  # decode and transfer threads; OpenCV and boto3 release the GIL


class IngestError(ValueError):
    """The batch or the bucket is not in a state data can be added from; the message says why."""


class LayoutError(IngestError):
    """The source directory is not a valid Kaggle-layout batch; ``problems`` lists every defect."""

    def __init__(self, source: Path, problems: list[str]):
        self.problems = problems
        shown = "\n".join(f"  - {p}" for p in problems[:_MAX_LISTED])
        more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
        super().__init__(f"{len(problems)} problem(s) in {source}, nothing was added:\n{shown}{more}")


@dataclass(frozen=True)
class BatchImage:
    subject: str
    classname: str
    img: str
    path: Path
    reviewed: bool = True  # False: a row of a review batch whose subject is still empty (never added)


@dataclass
class IngestReport:
    added: list[str] = field(default_factory=list)  # bucket keys
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (image, why)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (image, why)
    unreviewed: list[str] = field(default_factory=list)  # images of review rows with no subject yet
    manifest_key: str | None = None
    manifest: dict | None = None

    def left_out_line(self) -> str:
        """What of the batch did not go in (refused images, rows not reviewed), or "" when everything did."""
        left_out = [f"{len(self.refused)} image(s) refused (listed above)"] if self.refused else []
        left_out += [f"{len(self.unreviewed)} row(s) not reviewed"] if self.unreviewed else []
        return " and ".join(left_out)

    def __str__(self) -> str:
        lines = [f"{len(self.added)} added, {len(self.skipped)} skipped, {len(self.refused)} refused"]
        lines += [f"  refused {name}: {why}" for name, why in self.refused]
        if self.unreviewed:
            lines.append(
                f"{len(self.unreviewed)} row(s) not reviewed yet (no subject yet in {DRIVER_LIST}): "
                "not added; review them and run data.add again"
            )
        if self.manifest_key:
            counts = self.manifest["counts"]
            lines.append(
                f"new data manifest {self.manifest_key}: {counts['images']} images of "
                f"{counts['subjects']} drivers, listing {self.manifest['listing_sha256'][:12]}"
            )
        else:
            lines.append("nothing new: no manifest written")
        return "\n".join(lines)


# --- reading a batch ------------------------------------------------------------


def read_batch(source_dir: str | Path) -> list[BatchImage]:
    """The labelled images of a Kaggle-layout directory; raises LayoutError listing every defect."""
    source = Path(source_dir)
    csv_path, train = source / DRIVER_LIST, source / TRAIN_DIR
    problems: list[str] = []
    if not csv_path.is_file():
        problems.append(f"{DRIVER_LIST} is missing")
    elif not _inside(csv_path, source):
        problems.append(f"{DRIVER_LIST} is a symlink to a file outside the batch")
    if not train.is_dir():
        problems.append(f"{TRAIN_DIR}/ is missing")
    if problems:
        raise LayoutError(source, problems)
    rows, mentioned, unreviewed = _read_rows(csv_path, problems)
    on_disk = _files_on_disk(train, problems)
    images = []
    for classname, img in unreviewed:
        on_disk.pop(img, None)
        images.append(BatchImage("", classname, img, train / classname / img, reviewed=False))
    for line, (subject, classname, img, guess) in rows.items():
        folder = on_disk.pop(img, None)
        label = _reviewed_label(classname, folder, guess)
        if folder is None:
            problems.append(f"line {line}: {TRAIN_DIR}/{classname}/{img} is listed but missing")
        elif label is None:
            said = f" and the model said {guess}" if guess else ""
            problems.append(f"line {line}: {img} is in {TRAIN_DIR}/{folder}/ but its row says {classname}{said}")
        else:
            images.append(BatchImage(subject, label, img, train / folder / img))
    problems += [
        f"{TRAIN_DIR}/{folder}/{img} has no row in {DRIVER_LIST}"
        for img, folder in sorted(on_disk.items())
        if img not in mentioned
    ]  # bad rows are reported already
    if not rows and not unreviewed and not problems:
        problems.append(f"{DRIVER_LIST} lists no images")
    if problems:
        raise LayoutError(source, problems)
    return images


def _reviewed_label(classname: str, folder: str | None, guess: str | None) -> str | None:
    """The image's class: where its row and its folder agree. In a review batch a person corrects the
    model's guess either in the row or by moving the file; the one that differs from the guess is the
    label. None when they disagree otherwise."""
    if folder == classname:
        return classname
    if guess is not None and classname == guess:
        return folder  # the file was moved to its class folder, the row left as exported
    if guess is not None and folder == guess:
        return classname  # the row was corrected, the file left where the export put it
    return None


def _read_rows(csv_path: Path, problems: list[str]):
    """Valid rows by line number, every image name any row mentions, and the (class, image) of review rows
    not reviewed yet; defects go to ``problems``."""
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        lines = list(csv.reader(handle))
    header = tuple(h.strip() for h in lines[0]) if lines else ()
    if header not in (DRIVER_LIST_HEADER, REVIEW_HEADER):
        problems.append(
            f"{DRIVER_LIST}: the header must be {','.join(DRIVER_LIST_HEADER)} "
            f"(or {','.join(REVIEW_HEADER)} in a batch exported for review)"
        )
        return {}, set(), []
    rows, seen, mentioned, unreviewed = {}, {}, set(), []
    for line, fields in enumerate(lines[1:], start=2):
        if not fields or not "".join(fields).strip():
            continue
        if len(fields) != len(header):
            problems.append(f"line {line}: expected {len(header)} fields, found {len(fields)}")
            continue
        subject, classname, img = (f.strip() for f in fields[:3])
        mentioned.add(img)
        if header == REVIEW_HEADER and not subject:
            unreviewed.append((classname, img))
            continue
        bad = []
        if not _SUBJECT.match(subject):
            bad.append(f"subject {subject!r} is not like p002")
        if classname not in CLASSES:
            bad.append(f"class {classname!r} is not one of c0..c9")
        if not _IMAGE_NAME.match(img):
            bad.append(f"image name {img!r} is not a .jpg/.png file name")
        elif img in seen:
            bad.append(f"{img} is listed twice (also line {seen[img]})")
        if bad:
            problems.append(f"line {line}: " + "; ".join(bad))
            continue
        seen[img] = line
        rows[line] = (subject, classname, img, fields[3].strip() if header == REVIEW_HEADER else None)
    return rows, mentioned, unreviewed


def _files_on_disk(train: Path, problems: list[str]) -> dict[str, str]:
    """Image name → class folder for every file under imgs/train (hidden files ignored)."""
    found: dict[str, str] = {}
    for entry in sorted(train.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir() or entry.name not in CLASSES:
            problems.append(f"{TRAIN_DIR}/{entry.name} is not one of the class folders c0..c9")
            continue
        for path in sorted(entry.rglob("*")):
            if path.name.startswith(".") or path.is_dir():
                continue
            if path.parent != entry:
                problems.append(f"{path.relative_to(train.parent.parent)}: nested folders are not part of the layout")
            elif path.name in found:
                problems.append(f"{path.name} is in both {TRAIN_DIR}/{found[path.name]}/ and {TRAIN_DIR}/{entry.name}/")
            else:
                found[path.name] = entry.name
    return found


def _inside(path: Path, source: Path) -> bool:
    """Whether ``path``, symlinks followed, is a file of the batch ``source``."""
    return path.resolve().is_relative_to(source.resolve())


def _inspect(image: BatchImage, source: Path) -> tuple[BatchImage, str | None, str | None]:
    """(image at its real path, sha256, None) for a usable image, (image, None, reason) for one we refuse.

    A symlink that leads out of the batch is refused: data.add uploads what is in the batch, never
    another file of this machine that a link points at.
    """
    real = image.path.resolve()
    if not real.is_relative_to(source.resolve()):
        return image, None, "a symlink to a file outside the batch"
    try:
        data = real.read_bytes()
        decode_image(data)
    except (OSError, ImageError) as error:
        return image, None, f"unreadable: {error}"
    return replace(image, path=real), sha256_bytes(data), None


# --- the bucket side --------------------------------------------------------------


def _manifest_prefix(settings: Settings) -> str:
    return f"{settings.raw_prefix}/{MANIFESTS}/"


def image_key(settings: Settings, classname: str, img: str) -> str:
    return f"{settings.raw_prefix}/{TRAIN_DIR}/{classname}/{img}"


def latest_manifest(storage: Storage, settings: Settings) -> dict | None:
    """The newest data manifest in the bucket, or None before any data was added."""
    prefix = _manifest_prefix(settings)
    numbered = [k for k in storage.list_keys(prefix) if _MANIFEST_NAME.match(k[len(prefix) :])]
    if not numbered:
        return None
    return json.loads(storage.get_bytes(max(numbered)))


def add_data(storage: Storage, settings: Settings, source_dir: str | Path, progress: bool = True) -> IngestReport:
    """Put a Kaggle-layout batch into the raw prefix; write a new manifest when anything was added.

    Raises LayoutError (nothing added) when the batch's layout or labels are
    wrong. Unreadable images, symlinks that lead out of the batch, and names
    already in the bucket with other content, are refused and listed; the
    rest of the batch still goes in.
    In a batch exported for review (``REVIEW_HEADER``), rows whose subject is still empty
    are not reviewed: they are counted in ``report.unreviewed`` and left out.
    """
    source = Path(source_dir).resolve()
    batch = read_batch(source)
    report = IngestReport(unreviewed=[image.img for image in batch if not image.reviewed])
    batch = [image for image in batch if image.reviewed]
    parent = latest_manifest(storage, settings)
    existing = {Path(e["key"]).name: e for e in parent["images"]} if parent else {}
    with ThreadPoolExecutor(_WORKERS) as pool:
        checked = list(
            tqdm(
                pool.map(lambda image: _inspect(image, source), batch),
                total=len(batch),
                desc="checking images",
                unit="img",
                disable=not progress,
            )
        )
        new = _select_new(storage, settings, checked, existing, report)
        list(
            tqdm(
                pool.map(lambda item: storage.put_file(item[0].path, item[1]["key"]), new),
                total=len(new),
                desc="uploading",
                unit="img",
                disable=not progress,
            )
        )
    if not new:
        return report
    report.added = [entry["key"] for _, entry in new]
    listing = sorted([*existing.values(), *(entry for _, entry in new)], key=lambda e: e["key"])
    manifest = _manifest(parent, listing, source, report)
    key = f"{_manifest_prefix(settings)}{manifest['id']}.json"
    body = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
    if not storage.create_exclusive(key, body):
        raise IngestError(
            f"another data.add wrote {key} at the same time; run this one again "
            f"(the images it uploaded are kept and will be recognised)"
        )
    storage.put_bytes(f"{settings.raw_prefix}/{DRIVER_LIST}", driver_list_csv(listing).encode())
    report.manifest_key, report.manifest = key, manifest
    return report


def _select_new(storage, settings, checked, existing, report) -> list[tuple[BatchImage, dict]]:
    """Sort each inspected image into skipped, refused or new (image, manifest entry)."""
    by_hash = {e["sha256"]: e["key"] for e in existing.values()}
    new = []
    for image, sha, error in checked:
        if error:
            report.refused.append((image.img, error))
            continue
        key = image_key(settings, image.classname, image.img)
        known = existing.get(image.img)
        if known is not None:
            if known["sha256"] != sha:
                report.refused.append((image.img, f"name collision: {known['key']} holds different content"))
            elif (known["subject"], known["class"]) != (image.subject, image.classname):
                report.refused.append(
                    (image.img, f"already present as {known['subject']}/{known['class']}; data.add does not relabel")
                )
            else:
                report.skipped.append((image.img, "already present"))
        elif sha in by_hash:
            report.skipped.append((image.img, f"same content as {by_hash[sha]}"))
        elif storage.checksum(key) not in (None, sha):
            report.refused.append((image.img, f"name collision: {key} exists (in no manifest) with different content"))
        else:
            by_hash[sha] = key
            new.append((image, {"key": key, "sha256": sha, "subject": image.subject, "class": image.classname}))
    return new


def _manifest(parent: dict | None, listing: list[dict], source: Path, report: IngestReport) -> dict:
    per_class = {c: 0 for c in CLASSES}
    per_subject: dict[str, int] = {}
    for entry in listing:
        per_class[entry["class"]] += 1
        per_subject[entry["subject"]] = per_subject.get(entry["subject"], 0) + 1
    number = int(parent["id"]) + 1 if parent else 1
    return {
        "id": f"{number:06d}",
        "parent": parent["id"] if parent else None,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": str(source),
        "code_version": code_version(),
        "listing_sha256": sha256_json(listing),
        "counts": {
            "images": len(listing),
            "subjects": len(per_subject),
            "per_class": per_class,
            "per_subject": dict(sorted(per_subject.items())),
        },
        "batch": {
            "added": report.added,
            "skipped": len(report.skipped),
            "refused": [{"img": name, "reason": why} for name, why in report.refused],
            "unreviewed": len(report.unreviewed),
        },
        "images": listing,
    }


def driver_list_csv(listing: list[dict]) -> str:
    """``driver_imgs_list.csv`` for a manifest listing, ordered as Kaggle's (subject, class, image)."""
    rows = sorted((e["subject"], e["class"], Path(e["key"]).name) for e in listing)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(DRIVER_LIST_HEADER)
    writer.writerows(rows)
    return buffer.getvalue()


def materialize_raw(
    storage: Storage, settings: Settings, directory: str | Path, manifest: dict | None = None, progress: bool = True
) -> Path:
    """Make ``directory`` a Kaggle-layout copy of a manifest's data (default: the newest).

    Files already there with the right hash are kept, others are downloaded and
    verified, image files the manifest does not list are removed, and
    ``driver_imgs_list.csv`` is written from the manifest itself.
    """
    manifest = manifest or latest_manifest(storage, settings)
    if manifest is None:
        raise IngestError(f"no data manifest under {storage.uri(_manifest_prefix(settings))}: run `inv data.add` first")
    directory = Path(directory)
    prefix = f"{settings.raw_prefix}/"
    wanted = {directory / e["key"][len(prefix) :]: e for e in manifest["images"]}

    def fetch(item) -> None:
        target, entry = item
        if target.is_file() and sha256_file(target) == entry["sha256"]:
            return
        storage.get_file(entry["key"], target)
        if sha256_file(target) != entry["sha256"]:
            target.unlink()
            raise IngestError(f"{entry['key']} in the bucket does not match manifest {manifest['id']}")

    with ThreadPoolExecutor(_WORKERS) as pool:
        list(
            tqdm(
                pool.map(fetch, wanted.items()),
                total=len(wanted),
                desc=f"raw data {manifest['id']}",
                unit="img",
                disable=not progress,
            )
        )
    for path in sorted((directory / TRAIN_DIR).rglob("*")):
        if path.is_file() and path not in wanted:
            path.unlink()
    write_bytes_atomic(directory / DRIVER_LIST, driver_list_csv(manifest["images"]).encode())
    return directory
