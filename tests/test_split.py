"""The driver-grouped split: whole drivers per side, .lst files, folds, the plain-tree fallback."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest

from distracted_driver.data import layout
from distracted_driver.data.split import (
    LEAKAGE_WARNING,
    ListEntry,
    check_disjoint,
    grouped_folds,
    read_lst,
    split_dataset,
)


def write_driver_list(root: Path, drivers: int = 10, per_class: int = 2, uneven: bool = False) -> Path:
    """Only the CSV: the split never opens the images."""
    root.mkdir(parents=True, exist_ok=True)
    rows, number = [], 0
    for d in range(drivers):
        count = per_class + (d % 3 if uneven else 0)
        for c in layout.CLASSES:
            for _ in range(count):
                rows.append((f"p{d + 10:03d}", c, f"img_{number}.jpg"))
                number += 1
    with open(root / layout.DRIVER_LIST, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(layout.DRIVER_LIST_HEADER)
        writer.writerows(rows)
    return root


def drivers_by_path(root: Path) -> dict[str, str]:
    with open(root / layout.DRIVER_LIST, newline="") as handle:
        return {f"{r['classname']}/{r['img']}": r["subject"] for r in csv.DictReader(handle)}


def sides(out: Path) -> tuple[list[ListEntry], list[ListEntry]]:
    return read_lst(out / "train.lst"), read_lst(out / "validation.lst")


def test_whole_drivers_go_to_validation(tmp_path):
    root = write_driver_list(tmp_path / "src", drivers=10)
    report = split_dataset(root, tmp_path / "out", val_drivers=3, seed=4)
    train, validation = sides(tmp_path / "out")
    owner = drivers_by_path(root)
    train_drivers = {owner[e.path] for e in train}
    val_drivers = {owner[e.path] for e in validation}
    assert len(val_drivers) == 3 and len(train_drivers) == 7
    assert not train_drivers & val_drivers
    assert sorted(report.drivers["validation"]) == sorted(val_drivers)
    # every image exactly once, with its class as the label and a unique index
    assert sorted(e.path for e in train + validation) == sorted(owner)
    assert len({e.index for e in train + validation}) == len(owner)
    assert all(e.label == layout.class_index(e.path.split("/")[0]) for e in train + validation)
    assert report.class_balance()["validation"] == {c: 6 for c in layout.CLASSES}


def test_lst_lines_are_im2rec_format(tmp_path):
    root = write_driver_list(tmp_path / "src", drivers=4, per_class=1)
    split_dataset(root, tmp_path / "out", val_drivers=1)
    line = (tmp_path / "out" / "validation.lst").read_text().splitlines()[0]
    index, label, path = line.split("\t")
    assert int(index) >= 0 and label == f"{float(label):f}" and path.startswith("c0/img_")


def test_fraction_is_met_in_images_and_seed_decides(tmp_path):
    root = write_driver_list(tmp_path / "src", drivers=20, uneven=True)
    first = split_dataset(root, tmp_path / "a", val_fraction=0.25, seed=1)
    again = split_dataset(root, tmp_path / "b", val_fraction=0.25, seed=1)
    other = split_dataset(root, tmp_path / "c", val_fraction=0.25, seed=2)
    total = len(first.train) + len(first.validation)
    assert abs(len(first.validation) / total - 0.25) < 0.06
    assert (tmp_path / "a" / "train.lst").read_bytes() == (tmp_path / "b" / "train.lst").read_bytes()
    assert first.drivers != other.drivers
    assert again.drivers == first.drivers


def test_grouped_kfold_covers_every_driver_once(tmp_path):
    root = write_driver_list(tmp_path / "src", drivers=11, uneven=True)
    folds = 4
    seen = Counter()
    sizes = []
    for fold in range(folds):
        report = split_dataset(root, tmp_path / f"f{fold}", fold=fold, folds=folds, seed=3)
        check_disjoint(report.train, report.validation)
        seen.update(report.drivers["validation"])
        sizes.append(len(report.validation))
        assert set(report.drivers["train"]) | set(report.drivers["validation"]) == set(drivers_by_path(root).values())
    assert len(seen) == 11 and set(seen.values()) == {1}
    assert max(sizes) - min(sizes) <= 40  # balanced by image count (one driver has 20 to 40 images)


def test_grouped_folds_balance_image_counts():
    groups = {f"d{i}": n for i, n in enumerate([50, 40, 30, 30, 20, 20, 10, 10])}
    buckets = grouped_folds(groups, 3, seed=0)
    totals = sorted(sum(groups[name] for name in bucket) for bucket in buckets)
    assert sorted(name for bucket in buckets for name in bucket) == sorted(groups)
    assert totals[-1] - totals[0] <= 10


def test_check_disjoint_refuses_a_shared_driver():
    a = [ListEntry(0, 0.0, "c0/a.jpg", "p001")]
    b = [ListEntry(1, 1.0, "c1/b.jpg", "p001")]
    with pytest.raises(ValueError, match="p001"):
        check_disjoint(a, b)
    with pytest.raises(ValueError, match="images on both sides"):
        check_disjoint(a, [ListEntry(0, 0.0, "c0/a.jpg", "p002")])


def test_split_json_records_how(tmp_path):
    root = write_driver_list(tmp_path / "src", drivers=5, per_class=1)
    split_dataset(root, tmp_path / "out", val_drivers=1, seed=0)
    info = json.loads((tmp_path / "out" / "split.json").read_text())
    assert info["image_root"] == str((root / layout.TRAIN_DIR).resolve())
    assert info["counts"] == {"train": 40, "validation": 10}
    assert len(info["drivers"]["validation"]) == 1
    assert "by driver" in info["strategy"] and info["driver_list_sha256"]


def test_plain_class_tree_splits_at_random_with_a_warning(tmp_path, caplog):
    tree = tmp_path / "tree"
    for c in layout.CLASSES:
        (tree / c).mkdir(parents=True)
        for i in range(5):
            (tree / c / f"{c}_{i}.jpg").write_bytes(b"not read by the split")
    (tree / "c3" / "notes.txt").write_text("ignored")
    report = split_dataset(tree, tmp_path / "out", val_fraction=0.2, seed=0)
    assert LEAKAGE_WARNING in report.warnings
    assert "leakage" in caplog.text
    assert len(report.validation) == 10 and len(report.train) == 40
    assert report.drivers == {}
    with pytest.raises(ValueError, match="driver_imgs_list.csv"):
        split_dataset(tree, tmp_path / "out2", val_drivers=2)


@pytest.mark.parametrize(
    "content, message",
    [
        ("subject,class,img\np001,c0,a.jpg\n", "header"),
        ("subject,classname,img\np001,c12,a.jpg\n", "unknown class"),
        ("subject,classname,img\np001,c0\n", "expected subject,classname,img"),
        ("subject,classname,img\np001,c0,a.jpg\np002,c0,a.jpg\n", "listed for p001 and p002"),
        ("subject,classname,img\n", "lists no images"),
    ],
)
def test_bad_driver_list_is_refused_with_the_reason(tmp_path, content, message):
    (tmp_path / layout.DRIVER_LIST).write_text(content)
    with pytest.raises(ValueError, match=message):
        split_dataset(tmp_path, tmp_path / "out", val_drivers=1)


def test_conflicting_or_impossible_options(tmp_path):
    root = write_driver_list(tmp_path / "src", drivers=3, per_class=1)
    with pytest.raises(ValueError, match="only one"):
        split_dataset(root, tmp_path / "o", val_drivers=1, val_fraction=0.3)
    with pytest.raises(ValueError, match="--val-drivers"):
        split_dataset(root, tmp_path / "o", val_drivers=3)
    with pytest.raises(ValueError, match="--folds"):
        split_dataset(root, tmp_path / "o", fold=0, folds=4)
    with pytest.raises(ValueError, match="--fold must"):
        split_dataset(root, tmp_path / "o", fold=3, folds=3)


def test_adding_drivers_keeps_the_validation_drivers_nearly_in_place(tmp_path):
    before = split_dataset(write_driver_list(tmp_path / "a", drivers=26), tmp_path / "out-a", seed=0)
    after = split_dataset(write_driver_list(tmp_path / "b", drivers=28), tmp_path / "out-b", seed=0)
    old_drivers = set(before.drivers["train"]) | set(before.drivers["validation"])
    moved_to_validation = (set(after.drivers["validation"]) & old_drivers) - set(before.drivers["validation"])
    # A seeded shuffle of all drivers would re-deal most of validation; a per-driver rank moves at most
    # the one driver at the boundary, so the live model is rarely scored on drivers it trained on.
    assert len(moved_to_validation) <= 1
    assert len(set(before.drivers["validation"]) - set(after.drivers["validation"])) <= 1
