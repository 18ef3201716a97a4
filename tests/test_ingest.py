"""Adding data to the raw prefix of a real directory bucket, and reading it back."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from distracted_driver.config import Settings
from distracted_driver.data.ingest import (
    IngestError,
    LayoutError,
    add_data,
    driver_list_csv,
    latest_manifest,
    materialize_raw,
    read_batch,
)
from distracted_driver.data.sample import generate_sample
from distracted_driver.hashing import sha256_file, sha256_json
from distracted_driver.storage.local import LocalStorage

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def batches(tmp_path_factory) -> dict[str, Path]:
    """Two small batches: Kaggle's first drivers, and new drivers p090/p091."""
    root = tmp_path_factory.mktemp("batches")
    generate_sample(root / "first", drivers=2, images_per_class_driver=1, test_images=2, progress=False)
    generate_sample(root / "new", drivers=2, images_per_class_driver=1, test_images=2, first_driver=90, progress=False)
    return {"first": root / "first", "new": root / "new"}


@pytest.fixture
def bucket(tmp_path):
    settings = Settings(root=tmp_path)
    return LocalStorage(settings.bucket_dir), settings


@pytest.fixture
def batch(batches, tmp_path) -> Path:
    """A private copy of the first batch that a test may damage."""
    return Path(shutil.copytree(batches["first"], tmp_path / "batch"))


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def _write_rows(path: Path, rows) -> None:
    with open(path, "w", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows(rows)


def _manifest_keys(storage) -> list[str]:
    return storage.list_keys("raw/manifests/")


def test_a_batch_lands_under_raw_with_a_manifest(bucket, batches):
    storage, settings = bucket
    report = add_data(storage, settings, batches["first"], progress=False)
    assert len(report.added) == 20 and not report.skipped and not report.refused
    assert report.manifest_key == "raw/manifests/000001.json" == _manifest_keys(storage)[0]

    manifest = json.loads(storage.get_bytes(report.manifest_key))
    assert manifest == latest_manifest(storage, settings) == report.manifest
    assert manifest["id"] == "000001" and manifest["parent"] is None
    rows = _rows(batches["first"] / "driver_imgs_list.csv")[1:]
    expected = {
        (f"raw/imgs/train/{c}/{img}", s, c, sha256_file(batches["first"] / "imgs/train" / c / img))
        for s, c, img in rows
    }
    assert {(e["key"], e["subject"], e["class"], e["sha256"]) for e in manifest["images"]} == expected
    assert manifest["listing_sha256"] == sha256_json(manifest["images"])
    assert manifest["counts"]["images"] == 20 and manifest["counts"]["subjects"] == 2
    assert manifest["counts"]["per_class"] == {f"c{i}": 2 for i in range(10)}
    assert sorted(manifest["batch"]["added"]) == sorted(e[0] for e in expected)
    for key, _, _, sha in expected:
        assert storage.checksum(key) == sha
    assert sorted(_rows(settings.bucket_dir / "raw/driver_imgs_list.csv")[1:]) == sorted(rows)
    assert not any(k.startswith("raw/imgs/test") for k in storage.list_keys("raw/"))


def test_adding_the_same_batch_again_changes_nothing(bucket, batches):
    storage, settings = bucket
    add_data(storage, settings, batches["first"], progress=False)
    again = add_data(storage, settings, batches["first"], progress=False)
    assert not again.added and not again.refused and again.manifest_key is None
    assert len(again.skipped) == 20 and {why for _, why in again.skipped} == {"already present"}
    assert _manifest_keys(storage) == ["raw/manifests/000001.json"]
    assert "nothing new" in str(again)


def test_a_batch_of_new_drivers_extends_the_listing(bucket, batches):
    storage, settings = bucket
    first = add_data(storage, settings, batches["first"], progress=False).manifest
    second = add_data(storage, settings, batches["new"], progress=False)
    manifest = second.manifest
    assert second.manifest_key == "raw/manifests/000002.json"
    assert manifest["parent"] == "000001"
    assert manifest["counts"]["images"] == 40 and manifest["counts"]["subjects"] == 4
    assert sorted(manifest["counts"]["per_subject"]) == ["p002", "p012", "p090", "p091"]
    assert {e["key"] for e in first["images"]} < {e["key"] for e in manifest["images"]}
    assert len(manifest["batch"]["added"]) == 20
    assert manifest["listing_sha256"] != first["listing_sha256"]
    assert latest_manifest(storage, settings)["id"] == "000002"


def test_layout_and_label_problems_are_listed_and_nothing_is_added(bucket, batch):
    storage, settings = bucket
    rows = _rows(batch / "driver_imgs_list.csv")
    header, body = rows[0], rows[1:]
    subject, classname, img = body[0]
    body[1][1] = "c12"  # unknown class
    body[2][0] = "driver7"  # not a subject name
    (batch / "imgs/train" / classname / img).unlink()  # listed but missing
    (batch / "imgs/train/c3/img_999.jpg").write_bytes((batch / "imgs/train/c3").iterdir().__next__().read_bytes())
    (batch / "imgs/train/c10").mkdir()  # not a class folder
    _write_rows(batch / "driver_imgs_list.csv", [header, *body, body[3]])  # a duplicate row too

    with pytest.raises(LayoutError) as caught:
        add_data(storage, settings, batch, progress=False)
    message = str(caught.value)
    assert f"{img} is listed but missing" in message
    assert "'c12' is not one of c0..c9" in message
    assert "'driver7' is not like p002" in message
    assert "imgs/train/c3/img_999.jpg has no row" in message
    assert "imgs/train/c10 is not one of the class folders" in message
    assert "listed twice" in message
    assert len(caught.value.problems) == 6
    assert storage.list_keys() == []


def test_a_wrong_header_or_no_csv_is_a_clear_error(batch):
    _write_rows(batch / "driver_imgs_list.csv", [["driver", "label", "file"]])
    with pytest.raises(LayoutError, match="header must be subject,classname,img"):
        read_batch(batch)
    (batch / "driver_imgs_list.csv").unlink()
    with pytest.raises(LayoutError, match="driver_imgs_list.csv is missing"):
        read_batch(batch)


def test_an_image_in_the_wrong_class_folder_is_named(batch):
    rows = _rows(batch / "driver_imgs_list.csv")
    _, classname, img = rows[1]
    target = "c9" if classname != "c9" else "c0"
    os.replace(batch / "imgs/train" / classname / img, batch / "imgs/train" / target / img)
    with pytest.raises(LayoutError, match=f"{img} is in imgs/train/{target}/ but its row says {classname}"):
        read_batch(batch)


def test_unreadable_images_are_refused_with_a_list_and_the_rest_added(bucket, batch):
    storage, settings = bucket
    rows = _rows(batch / "driver_imgs_list.csv")[1:]
    (_, c_trunc, truncated), (_, c_junk, junk) = rows[0], rows[1]
    path = batch / "imgs/train" / c_trunc / truncated
    path.write_bytes(path.read_bytes()[:2000])
    (batch / "imgs/train" / c_junk / junk).write_bytes(b"this is not a jpeg")

    report = add_data(storage, settings, batch, progress=False)
    assert sorted(name for name, _ in report.refused) == sorted([truncated, junk])
    assert all(why.startswith("unreadable") for _, why in report.refused)
    assert len(report.added) == 18
    listed = {e["key"].rsplit("/", 1)[1] for e in report.manifest["images"]}
    assert truncated not in listed and junk not in listed
    assert {r["img"] for r in report.manifest["batch"]["refused"]} == {truncated, junk}
    assert not storage.exists(f"raw/imgs/train/{c_junk}/{junk}")
    assert f"refused {junk}" in str(report)


def test_a_name_collision_with_other_content_is_refused(bucket, batches, batch):
    storage, settings = bucket
    add_data(storage, settings, batch, progress=False)
    # Two existing names now hold other pictures (taken from the new drivers' batch).
    rows = _rows(batch / "driver_imgs_list.csv")[1:3]
    pictures = sorted((batches["new"] / "imgs/train/c0").iterdir())
    for (_, classname, img), picture in zip(rows, pictures):
        shutil.copy(picture, batch / "imgs/train" / classname / img)
    report = add_data(storage, settings, batch, progress=False)
    refused = dict(report.refused)
    assert set(refused) == {img for _, _, img in rows}
    assert all("name collision" in why for why in refused.values())
    assert len(report.skipped) == 18 and report.manifest_key is None
    for _, classname, img in rows:  # the bucket still holds the first pictures
        assert storage.checksum(f"raw/imgs/train/{classname}/{img}") == sha256_file(
            batches["first"] / "imgs/train" / classname / img
        )

    # An object nobody listed in a manifest is not overwritten either.
    stray = next(iter(sorted((batches["new"] / "imgs/train/c5").iterdir())))
    storage.put_bytes(f"raw/imgs/train/c5/{stray.name}", b"put there by hand")
    report = add_data(storage, settings, batches["new"], progress=False)
    assert "exists (in no manifest) with different content" in dict(report.refused)[stray.name]
    assert len(report.added) == 19 and storage.get_bytes(f"raw/imgs/train/c5/{stray.name}") == b"put there by hand"


def test_a_relabelled_or_copied_image_is_not_taken_twice(bucket, batch):
    storage, settings = bucket
    add_data(storage, settings, batch, progress=False)
    rows = _rows(batch / "driver_imgs_list.csv")
    subject, classname, img = rows[1]
    # The same file under a new name is a duplicate; the same name under another class a relabel.
    shutil.copy(batch / "imgs/train" / classname / img, batch / "imgs/train" / classname / "img_424242.jpg")
    rows.append([subject, classname, "img_424242.jpg"])
    _write_rows(batch / "driver_imgs_list.csv", rows)
    report = add_data(storage, settings, batch, progress=False)
    assert dict(report.skipped)["img_424242.jpg"] == f"same content as raw/imgs/train/{classname}/{img}"
    assert report.manifest_key is None

    other = "c9" if classname != "c9" else "c0"
    os.replace(batch / "imgs/train" / classname / img, batch / "imgs/train" / other / img)
    rows[1][1] = other
    _write_rows(batch / "driver_imgs_list.csv", rows)
    report = add_data(storage, settings, batch, progress=False)
    assert "does not relabel" in dict(report.refused)[img]


def test_materialize_raw_mirrors_the_newest_manifest(bucket, batches, tmp_path):
    storage, settings = bucket
    with pytest.raises(IngestError, match="run `inv data.add` first"):
        materialize_raw(storage, settings, tmp_path / "raw", progress=False)
    add_data(storage, settings, batches["first"], progress=False)
    manifest = add_data(storage, settings, batches["new"], progress=False).manifest

    local = materialize_raw(storage, settings, tmp_path / "raw", progress=False)
    images = read_batch(local)  # a valid Kaggle layout
    assert len(images) == 40
    assert {(f"raw/imgs/train/{i.classname}/{i.img}", sha256_file(i.path)) for i in images} == {
        (e["key"], e["sha256"]) for e in manifest["images"]
    }
    assert (local / "driver_imgs_list.csv").read_text() == driver_list_csv(manifest["images"])

    # A second call reuses what is there, repairs what changed and drops what is not listed.
    kept, damaged = images[0].path, images[1].path
    before = kept.stat().st_mtime_ns
    damaged.write_bytes(b"damaged")
    stale = local / "imgs/train/c4/img_1.jpg"
    stale.write_bytes(b"old")
    materialize_raw(storage, settings, local, progress=False)
    assert kept.stat().st_mtime_ns == before
    assert sha256_file(damaged) == storage.checksum(f"raw/imgs/train/{images[1].classname}/{images[1].img}")
    assert not stale.exists()

    first = json.loads(storage.get_bytes("raw/manifests/000001.json"))
    materialize_raw(storage, settings, local, manifest=first, progress=False)
    assert len(read_batch(local)) == 20


@pytest.mark.slow  # `inv` processes
def test_add_task_reports_and_exits_non_zero_on_refusals(tmp_path, batch):
    env = {**os.environ, "DD_BUCKET_DIR": str(tmp_path / "bucket")}
    rows = _rows(batch / "driver_imgs_list.csv")
    _, classname, img = rows[1]
    (batch / "imgs/train" / classname / img).write_bytes(b"\xff\xd8 broken")

    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "invoke", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
        )

    assert run("data.add", "--help").returncode == 0
    done = run("data.add", "--from", str(batch))
    assert done.returncode == 2
    assert "19 added, 0 skipped, 1 refused" in done.stdout and img in done.stdout
    assert (tmp_path / "bucket/raw/manifests/000001.json").is_file()
    bad = run("data.add", "--from", str(tmp_path / "nowhere"))
    assert bad.returncode == 2 and "driver_imgs_list.csv is missing" in bad.stderr


def test_symlinks_out_of_the_batch_are_refused_and_links_inside_it_kept(bucket, batch, tmp_path):
    storage, settings = bucket
    secret = tmp_path / "elsewhere" / "secret.jpg"
    secret.parent.mkdir()
    rows = _rows(batch / "driver_imgs_list.csv")[1:]
    (_, c_out, outside), (_, c_in, inside), (_, c_dir, _) = rows[0], rows[1], rows[2]
    shutil.copyfile(batch / "imgs/train" / c_out / outside, secret)  # a readable JPEG: only where it lives is wrong
    (batch / "imgs/train" / c_out / outside).unlink()
    (batch / "imgs/train" / c_out / outside).symlink_to(secret)
    kept = batch / "kept.jpg"  # a link to a file of the batch itself is fine
    os.replace(batch / "imgs/train" / c_in / inside, kept)
    (batch / "imgs/train" / c_in / inside).symlink_to(kept)
    # a whole class folder that is a link to a folder elsewhere
    moved = shutil.move(batch / "imgs/train" / c_dir, tmp_path / "elsewhere" / c_dir)
    (batch / "imgs/train" / c_dir).symlink_to(moved)
    in_moved = {p.name for p in Path(moved).iterdir()}

    report = add_data(storage, settings, batch, progress=False)
    refused = dict(report.refused)
    assert set(refused) == {outside} | in_moved
    assert all(why == "a symlink to a file outside the batch" for why in refused.values())
    listed = {e["key"].rsplit("/", 1)[1] for e in report.manifest["images"]}
    assert inside in listed and not listed & set(refused)
    assert not storage.exists(f"raw/imgs/train/{c_out}/{outside}")


def test_a_driver_list_linked_from_outside_the_batch_is_a_layout_error(batch, tmp_path):
    elsewhere = tmp_path / "list.csv"
    os.replace(batch / "driver_imgs_list.csv", elsewhere)
    (batch / "driver_imgs_list.csv").symlink_to(elsewhere)
    with pytest.raises(LayoutError, match="driver_imgs_list.csv is a symlink to a file outside the batch"):
        read_batch(batch)


# --- batches exported for review (inv monitor.export) -----------------------------------------


def _review_batch(batch: Path) -> list[list[str]]:
    """The batch rewritten as monitor.export leaves it: the review columns, the model's guess in classname
    (here the true class), no subject yet. Returns the rows (header first)."""
    rows = _rows(batch / "driver_imgs_list.csv")
    review = [["subject", "classname", "img", "model_class", "model_confidence", "event_id", "captured_at"]]
    for number, (_, classname, img) in enumerate(rows[1:]):
        review.append(["", classname, img, classname, "0.9000", f"event-{number}", "2026-11-30T08:00:00+00:00"])
    _write_rows(batch / "driver_imgs_list.csv", review)
    return review


def test_rows_not_reviewed_are_counted_and_left_out_and_the_rest_added(bucket, batch):
    storage, settings = bucket
    rows = _review_batch(batch)
    for row in rows[1:8]:
        row[0] = "p300"  # reviewed: a driver filled in, the guess confirmed
    _write_rows(batch / "driver_imgs_list.csv", rows)
    report = add_data(storage, settings, batch, progress=False)
    assert len(report.added) == 7 and len(report.unreviewed) == 13
    assert "13 row(s) not reviewed yet (no subject yet in driver_imgs_list.csv): not added" in str(report)
    listing = latest_manifest(storage, settings)
    assert {e["subject"] for e in listing["images"]} == {"p300"} and listing["batch"]["unreviewed"] == 13
    assert sorted(Path(e["key"]).name for e in listing["images"]) == sorted(row[2] for row in rows[1:8])
    for row in rows[8:]:  # the rest reviewed later: only they are added
        row[0] = "p301"
    _write_rows(batch / "driver_imgs_list.csv", rows)
    later = add_data(storage, settings, batch, progress=False)
    assert (len(later.added), len(later.skipped), later.unreviewed) == (13, 7, [])


def test_a_label_corrected_in_the_row_or_by_moving_the_file_is_taken(bucket, batch):
    storage, settings = bucket
    rows = _review_batch(batch)
    for row in rows[1:]:
        row[0] = "p301"
    by_row, by_move, ambiguous = rows[1], rows[2], rows[3]
    by_row[3] = "c9" if by_row[1] != "c9" else "c8"  # the model said something else; the file sits under its guess
    os.replace(batch / "imgs/train" / by_row[1] / by_row[2], batch / "imgs/train" / by_row[3] / by_row[2])
    by_move[3] = by_move[1]
    moved_to = "c9" if by_move[1] != "c9" else "c8"  # the reviewer dragged the file to its class, left the row
    os.replace(batch / "imgs/train" / by_move[1] / by_move[2], batch / "imgs/train" / moved_to / by_move[2])
    _write_rows(batch / "driver_imgs_list.csv", rows)
    images = {image.img: image for image in read_batch(batch)}
    assert images[by_row[2]].classname == by_row[1] and images[by_row[2]].path.parent.name == by_row[3]
    assert images[by_move[2]].classname == moved_to

    # The row, the folder and the guess all different: which one is right is not said.
    others = [c for c in ("c0", "c1", "c2", "c3") if c != ambiguous[1]]
    ambiguous[3] = others[0]
    os.replace(batch / "imgs/train" / ambiguous[1] / ambiguous[2], batch / "imgs/train" / others[1] / ambiguous[2])
    _write_rows(batch / "driver_imgs_list.csv", rows)
    with pytest.raises(
        LayoutError,
        match=f"{ambiguous[2]} is in imgs/train/{others[1]}/ but its row says "
        f"{ambiguous[1]} and the model said {others[0]}",
    ):
        add_data(storage, settings, batch, progress=False)
    assert storage.list_keys() == []


def test_add_task_counts_unreviewed_rows_and_exits_2(tmp_path, batch):
    env = {**os.environ, "DD_BUCKET_DIR": str(tmp_path / "bucket")}
    rows = _review_batch(batch)
    rows[1][0] = "p302"
    _write_rows(batch / "driver_imgs_list.csv", rows)
    done = subprocess.run(
        [sys.executable, "-m", "invoke", "data.add", "--from", str(batch)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "1 added" in done.stdout and "19 row(s) not reviewed yet" in done.stdout
    assert "19 row(s) not reviewed" in done.stderr
