"""Sample data: the exact Kaggle layout, determinism, driver naming and class cues."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from distracted_driver.data import cabin, sample
from distracted_driver.data.imaging import image_dimensions
from distracted_driver.data.layout import CLASSES
from distracted_driver.data.sample import SampleError, generate_sample
from distracted_driver.hashing import sha256_file

REPO = Path(__file__).resolve().parents[1]
NAME = re.compile(r"^img_\d+\.jpg$")


def _csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def _tree_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def _image_names(root: Path) -> set[str]:
    return {p.name for p in root.rglob("*.jpg")}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sample") / "s"
    generate_sample(out, drivers=3, images_per_class_driver=2, test_images=5, seed=1, progress=False)
    return out


def test_writes_exactly_the_kaggle_layout(small):
    assert sorted(p.name for p in small.iterdir()) == ["driver_imgs_list.csv", "imgs", "sample_submission.csv"]
    assert sorted(p.name for p in (small / "imgs").iterdir()) == ["test", "train"]
    assert sorted(p.name for p in (small / "imgs/train").iterdir()) == list(CLASSES)
    on_disk = {(p.parent.name, p.name) for p in (small / "imgs/train").rglob("*") if p.is_file()}
    assert len(on_disk) == 3 * 10 * 2
    assert all(NAME.match(name) for _, name in on_disk)
    for path in [*(small / "imgs/train").rglob("*.jpg"), *(small / "imgs/test").iterdir()]:
        assert image_dimensions(path.read_bytes()) == (640, 480)

    rows = _csv(small / "driver_imgs_list.csv")
    assert rows[0] == ["subject", "classname", "img"]
    assert {(c, img) for _, c, img in rows[1:]} == on_disk
    assert len(rows) - 1 == len(on_disk)
    subjects = [s for s, _, _ in rows[1:]]
    assert sorted(set(subjects)) == ["p002", "p012", "p014"]  # Kaggle's first subjects
    for subject in set(subjects):
        per_class = [c for s, c, _ in rows[1:] if s == subject]
        assert sorted(per_class) == sorted(list(CLASSES) * 2)

    submission = _csv(small / "sample_submission.csv")
    assert submission[0] == ["img", *CLASSES]
    assert {r[0] for r in submission[1:]} == {p.name for p in (small / "imgs/test").iterdir()}
    assert len(submission) - 1 == 5
    assert all(r[1:] == ["0.1"] * 10 for r in submission[1:])
    assert not _image_names(small / "imgs/train") & _image_names(small / "imgs/test")


def test_same_seed_same_bytes_other_seed_other_bytes(small, tmp_path):
    generate_sample(tmp_path / "again", drivers=3, images_per_class_driver=2, test_images=5, seed=1, progress=False)
    assert _tree_hashes(tmp_path / "again") == _tree_hashes(small)
    generate_sample(tmp_path / "other", drivers=3, images_per_class_driver=2, test_images=5, seed=2, progress=False)

    def images(root):
        return {h for name, h in _tree_hashes(root).items() if name.endswith(".jpg")}

    assert images(tmp_path / "other").isdisjoint(images(small))


def test_new_driver_batch_never_reuses_a_name(small, tmp_path):
    batch = tmp_path / "new"
    report = generate_sample(
        batch, drivers=2, images_per_class_driver=2, test_images=5, seed=1, first_driver=90, progress=False
    )
    assert report.subjects == ["p090", "p091"]
    assert {r[0] for r in _csv(batch / "driver_imgs_list.csv")[1:]} == {"p090", "p091"}
    assert not _image_names(batch) & _image_names(small)


def test_worker_processes_draw_the_same_bytes(small, tmp_path):
    generate_sample(
        tmp_path / "parallel", drivers=3, images_per_class_driver=2, test_images=5, seed=1, workers=2, progress=False
    )
    assert _tree_hashes(tmp_path / "parallel") == _tree_hashes(small)


def test_class_counts_spread_each_class_over_the_drivers(tmp_path):
    counts = (3, 2, 2, 1, 2, 2, 2, 1, 1, 4)
    report = generate_sample(tmp_path / "s", drivers=2, class_counts=counts, test_images=1, progress=False)
    rows = _csv(tmp_path / "s" / "driver_imgs_list.csv")[1:]
    assert report.train_images == sum(counts) == len(rows)
    assert [sum(1 for _, c, _ in rows if c == name) for name in CLASSES] == list(counts)
    per_driver = [sum(1 for s, _, _ in rows if s == subject) for subject in ("p002", "p012")]
    assert abs(per_driver[0] - per_driver[1]) <= 1
    assert len(list((tmp_path / "s" / "imgs/train").rglob("*.jpg"))) == sum(counts)


def test_kaggle_size_is_the_competitions():
    classes, test = sample.kaggle_size(1.0)
    assert sum(classes) == 22_424 and test == 79_726 and classes[0] == 2489 and classes[8] == 1911
    classes, test = sample.kaggle_size(0.1)
    assert classes == (249, 227, 232, 235, 233, 231, 232, 200, 191, 213) and test == 7973
    spread = sample.per_driver_counts(sample.KAGGLE_CLASS_COUNTS, 26)
    assert [sum(row[i] for row in spread) for i in range(10)] == list(sample.KAGGLE_CLASS_COUNTS)
    assert max(map(sum, spread)) - min(map(sum, spread)) <= 1
    with pytest.raises(SampleError, match="scale"):
        sample.kaggle_size(0)


def test_test_images_past_one_drivers_slots_take_the_next_drivers_numbers():
    numbers = sample.driver_numbers(26)
    names = [sample._test_number(0, numbers, i) for i in range(sample.KAGGLE_TEST_IMAGES)]
    assert len(set(names)) == len(names)
    # Each is in the upper (test) half of a batch driver's range, never in the lower (training) half.
    assert all(n // sample.SLOTS in numbers and n % sample.SLOTS >= sample.SLOTS // 2 for n in names)
    assert names[sample.TEST_SLOTS] // sample.SLOTS == numbers[1]


def test_default_subjects_look_like_kaggle_and_continue_past_them():
    assert sample.driver_numbers(3) == [2, 12, 14]
    assert len(set(sample.driver_numbers(30))) == 30
    assert sample.driver_numbers(2, first_driver=90) == [90, 91]
    assert sample.subject_name(7) == "p007"


def test_bad_options_and_foreign_directories_are_refused(small, tmp_path):
    with pytest.raises(SampleError, match="images_per_class_driver"):
        generate_sample(tmp_path / "x", images_per_class_driver=0, progress=False)
    with pytest.raises(SampleError, match="drivers"):
        generate_sample(tmp_path / "x", drivers=0, progress=False)
    with pytest.raises(SampleError, match="test_images must be between 0 and 10000"):
        generate_sample(tmp_path / "x", drivers=2, test_images=10_001, progress=False)
    with pytest.raises(SampleError, match="more than 500 images of a class per driver"):
        generate_sample(tmp_path / "x", drivers=1, class_counts=(501,) + (1,) * 9, progress=False)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(SampleError, match="not empty"):
        generate_sample(foreign, drivers=1, images_per_class_driver=1, progress=False)
    with pytest.raises(SampleError, match="does not look like a sample"):
        generate_sample(foreign, drivers=1, images_per_class_driver=1, overwrite=True, progress=False)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_overwrite_replaces_a_previous_sample(tmp_path):
    out = tmp_path / "s"
    generate_sample(out, drivers=2, images_per_class_driver=1, test_images=2, progress=False)
    report = generate_sample(
        out, drivers=1, images_per_class_driver=1, test_images=0, seed=3, overwrite=True, progress=False
    )
    assert report.train_images == 10
    assert len(list((out / "imgs/train").rglob("*.jpg"))) == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no staging or old copy left behind


def test_an_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    calls = []
    real_encode = sample._encode

    def failing_encode(frame):
        calls.append(1)
        if len(calls) == 7:
            raise KeyboardInterrupt
        return real_encode(frame)

    monkeypatch.setattr(sample, "_encode", failing_encode)
    with pytest.raises(KeyboardInterrupt):
        generate_sample(tmp_path / "s", drivers=2, images_per_class_driver=1, progress=False)
    assert list(tmp_path.iterdir()) == []


# Where each class's cue sits in the 640x480 frame (x0, y0, x1, y1), as drawn by cabin.POSES.
CUE_BOXES = {
    "c1": (290, 350, 420, 450),  # phone low on the right
    "c2": (350, 140, 420, 230),  # phone at the right ear
    "c3": (220, 290, 300, 350),  # phone in the left hand
    "c5": (470, 330, 570, 420),  # hand at the radio
    "c6": (270, 140, 350, 230),  # cup at the mouth
    "c7": (490, 150, 620, 240),  # arm towards the rear seat
    "c8": (340, 80, 480, 200),  # hand at the hair
    "c9": (320, 120, 420, 220),  # face turned to the passenger
}


def _render(look, classname: str) -> np.ndarray:
    # The same random stream for every class: only the pose differs between the frames.
    frame = cabin.render(
        look, classname, np.random.default_rng(5), cabin.lighting_map(look), cabin.SensorNoise(np.random.default_rng(6))
    )
    return frame.astype(np.float32)


@pytest.mark.parametrize("driver", [0, 1, 5])
def test_each_class_changes_the_frame_where_its_cue_is(driver):
    look = cabin.random_look(np.random.default_rng([9, driver]))
    look = cabin.DriverLook(
        **{
            **look.__dict__,
            "camera_shift": (0.0, 0.0),
            "camera_angle": 0.0,
            "camera_scale": 1.0,
            "seat_shift": (0.0, 0.0),
        }
    )
    safe = _render(look, "c0")
    for classname, (x0, y0, x1, y1) in CUE_BOXES.items():
        diff = np.abs(_render(look, classname) - safe).max(axis=2)
        inside = diff[y0:y1, x0:x1].mean()
        assert inside > 8, (classname, inside)
        assert inside > 3 * diff.mean(), (classname, inside, diff.mean())
        assert diff[:60, :120].max() < 1, classname  # the windshield corner never moves


@pytest.mark.slow  # `inv` processes
def test_sample_task_help_and_the_reviewers_check(tmp_path):
    env = {**os.environ, "DD_WORK_DIR": str(tmp_path / "work")}

    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "invoke", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
        )

    help_text = run("data.sample", "--help")
    assert help_text.returncode == 0, help_text.stderr
    assert "--images-per-class-driver" in help_text.stdout and "--first-driver" in help_text.stdout
    assert "--shift" in help_text.stdout
    out = tmp_path / "s"
    done = run("data.sample", "--out", str(out), "--drivers", "6", "--images-per-class-driver", "2", "--seed", "1")
    assert done.returncode == 0, done.stderr
    assert len(list((out / "imgs/train").rglob("*.jpg"))) == 120
    assert len({r[0] for r in _csv(out / "driver_imgs_list.csv")[1:]}) == 6
    again = run("data.sample", "--out", str(out))
    assert again.returncode == 2 and "overwrite" in again.stderr
    for _ in range(2):  # the default output, in the work directory, is replaced on every run
        small = run("data.sample", "--drivers", "1", "--images-per-class-driver", "1", "--test-images", "0")
        assert small.returncode == 0, small.stderr
    assert len(list((tmp_path / "work/sample/imgs/train").rglob("*.jpg"))) == 10
    night = run(
        "data.sample",
        "--out",
        str(tmp_path / "night"),
        "--drivers",
        "1",
        "--images-per-class-driver",
        "1",
        "--test-images",
        "0",
        "--shift",
        "night",
    )
    assert night.returncode == 0, night.stderr
    fog = run("data.sample", "--out", str(tmp_path / "fog"), "--shift", "fog")
    assert fog.returncode == 2 and "shift must be one of night, angle, cabin" in fog.stderr


# --- shifted batches for drift tests ----------------------------------------------------------


def _medians(root: Path) -> dict[str, float]:
    import cv2

    from distracted_driver.data.image_stats import image_statistics

    stats = [image_statistics(cv2.imread(str(p))) for p in sorted((root / "imgs/train").rglob("*.jpg"))]
    return {name: float(np.median([s[name] for s in stats])) for name in stats[0]}


@pytest.mark.parametrize("shift", cabin.SHIFTS)
def test_a_shifted_batch_keeps_the_layout_drivers_and_labels_but_not_the_look(small, tmp_path, shift):
    out = tmp_path / shift
    generate_sample(out, drivers=3, images_per_class_driver=2, test_images=5, seed=1, shift=shift, progress=False)
    assert _csv(out / "driver_imgs_list.csv") == _csv(small / "driver_imgs_list.csv")
    shifted, plain = _tree_hashes(out), _tree_hashes(small)
    assert shifted.keys() == plain.keys()
    assert all(shifted[name] != plain[name] for name in shifted if name.endswith(".jpg"))
    again = tmp_path / f"{shift}-again"
    generate_sample(again, drivers=3, images_per_class_driver=2, test_images=5, seed=1, shift=shift, progress=False)
    assert _tree_hashes(again) == shifted  # deterministic like every sample


def test_night_is_dark_and_a_new_cabin_bright(small, tmp_path):
    day = _medians(small)
    for shift in ("night", "cabin"):
        generate_sample(
            tmp_path / shift, drivers=3, images_per_class_driver=1, test_images=0, seed=1, shift=shift, progress=False
        )
    assert _medians(tmp_path / "night")["brightness"] < day["brightness"] / 3
    assert _medians(tmp_path / "cabin")["brightness"] > day["brightness"] * 1.3


def test_the_camera_of_an_angle_shift_is_turned_far_beyond_any_training_driver():
    rng = np.random.default_rng([0, 1, 7])
    look = cabin.random_look(rng)
    turned = cabin.shifted_look(look, "angle", rng)
    assert abs(look.camera_angle) <= 4 and abs(turned.camera_angle) >= 14
    assert turned.skin == look.skin and turned.clothing == look.clothing  # the same driver


def test_an_unknown_shift_is_refused(tmp_path):
    with pytest.raises(SampleError, match="shift must be one of night, angle, cabin, not 'fog'"):
        generate_sample(tmp_path / "s", drivers=1, shift="fog", progress=False)
    assert not (tmp_path / "s").exists()
