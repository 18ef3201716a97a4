"""The converter: real images → real RecordIO channels, skipped images, options, atomicity, upload."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import psutil
import pytest
from waiting import wait_until

from distracted_driver.data import channels, convert, layout, recordio
from distracted_driver.data.convert import ConvertOptions
from distracted_driver.data.sample import generate_sample
from distracted_driver.data.split import read_lst, split_dataset
from distracted_driver.storage.local import LocalStorage

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def kaggle_root(tmp_path_factory) -> Path:
    """5 drivers x 10 classes, one 640x480 JPEG each, plus a corrupt and a missing image in the CSV."""
    root = tmp_path_factory.mktemp("kaggle") / "sample"
    generate_sample(root, drivers=5, images_per_class_driver=1, test_images=0, seed=3, progress=False)
    (root / layout.TRAIN_DIR / "c4" / "img_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is no jpeg")
    with open(root / layout.DRIVER_LIST, "a") as handle:
        handle.write("p002,c4,img_broken.jpg\np012,c5,img_missing.jpg\n")
    return root


@pytest.fixture(scope="module")
def built(kaggle_root, tmp_path_factory) -> channels.BuildReport:
    out = tmp_path_factory.mktemp("channels")
    return channels.build_channels(
        kaggle_root, out / "data", val_drivers=1, seed=0, workers=2, progress=False, lists_dir=out / "lists"
    )


def records(directory: Path, name: str) -> dict[int, tuple[recordio.ImageHeader, bytes]]:
    with recordio.IndexedRecordReader(directory / name / f"{name}.idx", directory / name / f"{name}.rec") as reader:
        return {key: recordio.unpack(record) for key, record in reader}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_channels_hold_every_good_image_with_header_and_resized_pixels(built, kaggle_root):
    image_root = kaggle_root / layout.TRAIN_DIR
    total = 0
    for name in ("train", "validation"):
        listed = read_lst(built.directory / name / f"{name}.lst")
        got = records(built.directory, name)
        assert list(got) == [e.index for e in listed]  # .idx keys in .lst order
        for entry in listed:
            header, payload = got[entry.index]
            assert header == recordio.ImageHeader(0, entry.label, entry.index, 0)
            image = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)
            assert image.shape == (256, 341, 3)
            source = cv2.imread(str(image_root / entry.path))
            assert psnr(image, cv2.resize(source, (341, 256))) > 35
        total += len(listed)
    assert total == 50


def test_bad_images_are_skipped_with_reasons(built):
    skipped = {path: reason for c in built.convert.channels for path, reason in c.skipped}
    assert skipped == {
        "c4/img_broken.jpg": "image header is incomplete: no width and height found",
        "c5/img_missing.jpg": "missing file",
    }
    manifest = json.loads((built.directory / "manifest.json").read_text())
    listed = {s["path"]: s["reason"] for split in manifest["splits"].values() for s in split["skipped"]}
    assert listed == skipped
    assert "skipped 1: missing file" in built.summary()


def test_manifest_describes_the_channels(built, kaggle_root):
    manifest = channels.verify_channels(built.directory)
    assert manifest["options"] == {
        "resize": 256,
        "center_crop": False,
        "quality": 95,
        "encoding": ".jpg",
        "pass_through": False,
        "interpolation": "linear",
    }
    counts = manifest["counts"]
    assert counts["train"]["written"] + counts["validation"]["written"] == 50
    assert counts["train"]["skipped"] + counts["validation"]["skipped"] == 2
    assert len(manifest["splits"]["validation"]["drivers"]) == 1
    assert set(manifest["splits"]["train"]["drivers"]).isdisjoint(manifest["splits"]["validation"]["drivers"])
    for name in ("train", "validation"):
        histogram = manifest["splits"][name]["class_histogram"]
        assert sum(histogram.values()) == counts[name]["written"]
        assert set(manifest["splits"][name]["files"]) == {f"{name}/{name}{e}" for e in (".rec", ".idx", ".lst")}
    assert len(manifest["dataset_sha256"]) == 64


def test_same_inputs_give_identical_files_whatever_the_workers(built, tmp_path):
    lists = built.directory.parent / "lists"
    again = convert.convert_lists(lists, tmp_path / "one", workers=1, progress=False)
    assert again.manifest == built.convert.manifest  # deterministic: same bytes, same manifest
    for name in ("train", "validation"):
        for ext in (".rec", ".idx", ".lst"):
            assert (tmp_path / "one" / name / f"{name}{ext}").read_bytes() == (
                built.directory / name / f"{name}{ext}"
            ).read_bytes()


@pytest.mark.parametrize(
    "options, shape",
    [
        (ConvertOptions(center_crop=True), (256, 256, 3)),
        (ConvertOptions(resize=0), (480, 640, 3)),
        (ConvertOptions(resize=128, interpolation="area"), (128, 170, 3)),
    ],
)
def test_geometry_options(kaggle_root, options, shape):
    data = sorted((kaggle_root / layout.TRAIN_DIR / "c1").glob("*.jpg"))[0].read_bytes()
    out = cv2.imdecode(np.frombuffer(convert.transform(data, options), np.uint8), cv2.IMREAD_COLOR)
    assert out.shape == shape


def test_portrait_and_png_and_pass_through(tmp_path):
    portrait = np.random.default_rng(0).integers(0, 255, (400, 300, 3), dtype=np.uint8)
    data = cv2.imencode(".jpg", portrait)[1].tobytes()
    png = convert.transform(data, ConvertOptions(resize=100, encoding=".png"))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    expected = cv2.resize(decoded, (100, 133))  # im2rec: shorter edge 100, longer 400*100//300
    np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR), expected)
    assert convert.transform(data, ConvertOptions(pass_through=True)) == data
    with pytest.raises(convert.ImageError):
        convert.transform(b"plain text", ConvertOptions(pass_through=True))


def test_invalid_options_are_refused():
    with pytest.raises(ValueError, match="--quality"):
        ConvertOptions(quality=101)
    with pytest.raises(ValueError, match="--quality"):
        ConvertOptions(encoding=".png", quality=12)
    with pytest.raises(ValueError, match="--encoding"):
        ConvertOptions(encoding=".webp")
    assert ConvertOptions(encoding=".png").effective_quality == 3


def group_gone(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return True
    return False


def opening_a_fifo(process: subprocess.Popen) -> bool:
    """Whether the process or one of its children waits in open() of a FIFO for a writer (Linux's wchan)."""
    try:
        family = [process.pid, *(child.pid for child in psutil.Process(process.pid).children(recursive=True))]
    except psutil.NoSuchProcess:
        return False
    for pid in family:
        try:
            if Path(f"/proc/{pid}/wchan").read_text().strip() == "wait_for_partner":
                return True
        except OSError:
            continue
    return False


@pytest.mark.slow  # a converter process interrupted at a chosen image
@pytest.mark.parametrize("workers", [1, 2])
def test_interrupted_conversion_leaves_no_complete_looking_output(kaggle_root, tmp_path, workers):
    """A run stuck on one image (a FIFO nobody writes) is interrupted, then killed; then rerun."""
    source = tmp_path / "src"
    shutil.copytree(kaggle_root, source)
    lists = tmp_path / "lists"
    split_dataset(source, lists, val_drivers=1, seed=0)
    stuck = read_lst(lists / "train.lst")[5].path
    (source / layout.TRAIN_DIR / stuck).unlink()
    os.mkfifo(source / layout.TRAIN_DIR / stuck)
    out = tmp_path / "out"
    script = (  # Ctrl-C as from a terminal, even when this test runs in the background (SIGINT ignored there)
        "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "from distracted_driver.data.convert import convert_lists; "
        "convert_lists(sys.argv[1], sys.argv[2], workers=int(sys.argv[3]), progress=False)"
    )

    def run_until_stuck():
        process = subprocess.Popen(
            [sys.executable, "-c", script, str(lists), str(out), str(workers)], start_new_session=True
        )
        wait_until(
            lambda: list((out / "train").glob(".train.rec.*.tmp")) and opening_a_fifo(process),
            30,
            what="the conversion to be writing and stuck on the FIFO",
            process=process,
        )
        return process

    process = run_until_stuck()  # Ctrl-C: temporary files are removed
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) != 0
    wait_until(lambda: group_gone(process.pid), 10, what="its workers (and fork server) to end with it")
    assert sorted(p.name for p in (out / "train").iterdir()) == []
    assert not (out / "manifest.json").exists()

    process = run_until_stuck()  # kill -9 of the whole group: only temporary names remain
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    assert all(p.name.endswith(".tmp") for p in (out / "train").iterdir())
    assert not (out / "manifest.json").exists()
    with pytest.raises(channels.ChannelsError, match="did not finish"):
        channels.verify_channels(out)

    (source / layout.TRAIN_DIR / stuck).unlink()
    shutil.copy(kaggle_root / layout.TRAIN_DIR / stuck, source / layout.TRAIN_DIR / stuck)
    convert.convert_lists(lists, out, workers=1, progress=False)
    assert sorted(p.name for p in (out / "train").iterdir()) == ["train.idx", "train.lst", "train.rec"]
    bad = {"c4/img_broken.jpg", "c5/img_missing.jpg"}
    expected = [e.path for e in read_lst(lists / "train.lst") if e.path not in bad]
    assert [e.path for e in read_lst(out / "train" / "train.lst")] == expected


def test_upload_and_download_round_trip(built, tmp_path):
    storage = LocalStorage(tmp_path / "bucket")
    first = channels.upload_channels(storage, built.directory)
    keys = storage.list_keys("data/")
    assert keys == sorted(first.uploaded)
    assert first.uploaded[-1] == "data/manifest.json"  # last, so a reader never sees it before the channels
    assert set(keys) == {"data/manifest.json"} | {
        f"data/{n}/{n}{e}" for n in ("train", "validation") for e in (".rec", ".idx", ".lst")
    }
    second = channels.upload_channels(storage, built.directory)
    assert second.uploaded == [] and len(second.skipped) == 7

    local = tmp_path / "fetched"
    manifest = channels.download_channels(storage, "data", local)
    assert manifest == built.convert.manifest
    assert (local / "train" / "train.rec").read_bytes() == (built.directory / "train" / "train.rec").read_bytes()

    (local / "validation" / "validation.idx").write_text("tampered\n")
    with pytest.raises(channels.ChannelsError, match="checksum"):
        channels.verify_channels(local)
    channels.download_channels(storage, "data", local)  # repairs what does not match
    channels.verify_channels(local)


def test_upload_refuses_an_unfinished_conversion(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "train.rec").write_bytes(b"")
    with pytest.raises(channels.ChannelsError, match="did not finish"):
        channels.upload_channels(LocalStorage(tmp_path / "bucket"), tmp_path)
    with pytest.raises(channels.ChannelsError, match="upload the channels first"):
        channels.download_channels(LocalStorage(tmp_path / "bucket"), "data", tmp_path / "x")


@pytest.mark.slow
def test_tasks_chain_with_default_paths(tmp_path):
    """`inv data.sample && inv data.split && inv data.convert && inv data.upload`, the last three with no options."""
    inv = [sys.executable, "-m", "invoke", "--search-root", str(TESTS.parent)]
    env = {**os.environ, "DD_ROOT": str(tmp_path)}

    def run(*args: str) -> str:
        result = subprocess.run([*inv, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return result.stdout

    run("data.sample", "--drivers", "4", "--images-per-class-driver", "1", "--test-images", "0")
    assert "by driver" in run("data.split")
    assert "manifest" in run("data.convert")
    assert "7 uploaded" in run("data.upload")
    assert "0 uploaded, 7 unchanged" in run("data.upload")
    manifest = json.loads((tmp_path / ".bucket" / "data" / "manifest.json").read_text())
    assert sum(c["written"] for c in manifest["counts"].values()) == 40
    failed = subprocess.run(
        [*inv, "data.split", "--val-drivers", "9"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert failed.returncode == 2 and "--val-drivers must be between 1 and 3" in failed.stderr


def test_a_jpeg_cut_before_its_end_marker_is_refused_not_stored_with_grey_rows():
    frame = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    whole = cv2.imencode(".jpg", frame)[1].tobytes()
    assert convert.transform(whole, ConvertOptions())
    for cut in (whole[:-2], whole[: len(whole) // 2]):
        with pytest.raises(convert.ImageError, match="truncated"):
            convert.transform(cut, ConvertOptions())
