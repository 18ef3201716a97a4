"""The one image check of every stage: strict JPEG decoding, and no size the data cannot hold.

Damaged JPEGs that still end with the end-of-image marker pass a check of the
markers alone, and OpenCV decodes them with a warning (grey or garbled rows,
or a 36-megapixel frame from 48 KB). Each stage that reads an image refuses
them: conversion, ingest, the training/evaluation channel reader, batch
prediction, and the model server behind the REST API.
"""

from __future__ import annotations

import io
import struct

import cv2
import numpy as np
import pytest
import requests
from hostile_images import camera_like_jpeg, corrupt_jpegs, png_claiming

from distracted_driver.config import Settings
from distracted_driver.data import convert
from distracted_driver.data.channel import Record, decoded_batches
from distracted_driver.data.convert import ConvertOptions
from distracted_driver.data.imaging import ImageError, Preprocessing, decode_image
from distracted_driver.data.ingest import add_data
from distracted_driver.data.sample import generate_sample
from distracted_driver.storage.local import LocalStorage

CORRUPT = corrupt_jpegs()


def _flags(extra: list[int]) -> list[int]:
    return [cv2.IMWRITE_JPEG_QUALITY, 90, *extra]


def _exif_rotated(jpeg: bytes, orientation: int) -> bytes:
    """The JPEG with an APP1 EXIF segment whose orientation tag is ``orientation``."""
    entry = struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0)
    tiff = b"MM\x00*" + struct.pack(">I", 8) + struct.pack(">H", 1) + entry + struct.pack(">I", 0)
    payload = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def _cmyk_jpeg() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("CMYK", (80, 60), (40, 120, 200, 10)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def test_sound_jpegs_decode_to_opencvs_pixels():
    frame = cv2.imdecode(np.frombuffer(camera_like_jpeg(seed=1), np.uint8), cv2.IMREAD_COLOR)
    samples = [
        cv2.imencode(
            ".jpg", frame, _flags([cv2.IMWRITE_JPEG_SAMPLING_FACTOR, factor, cv2.IMWRITE_JPEG_PROGRESSIVE, progressive])
        )[1].tobytes()
        for factor in (
            cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420,
            cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422,
            cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444,
        )
        for progressive in (0, 1)
    ]
    samples += [
        cv2.imencode(".jpg", frame[:, :, 0])[1].tobytes(),  # greyscale
        _exif_rotated(samples[0], 6),  # OpenCV turns it upright; so must we
        _cmyk_jpeg(),
        cv2.imencode(".png", frame)[1].tobytes(),
    ]
    for data in samples:
        np.testing.assert_array_equal(decode_image(data), cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))
    assert decode_image(samples[-3]).shape == (640, 480, 3)


@pytest.mark.parametrize("name", list(CORRUPT))
@pytest.mark.parametrize("min_size", [0, 224, 32])
def test_a_corrupt_jpeg_that_ends_with_its_end_marker_is_refused(name, min_size):
    data, words = CORRUPT[name]
    assert data.endswith(b"\xff\xd9")
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is not None  # OpenCV would take it
    with pytest.raises(ImageError, match=words):
        decode_image(data, min_size=min_size)  # a reduced scale still entropy-decodes every block


def test_dct_scaled_decoding_takes_the_smallest_power_of_two_scale_that_keeps_both_edges():
    frame = cv2.imdecode(np.frombuffer(camera_like_jpeg(seed=1), np.uint8), cv2.IMREAD_COLOR)
    record = cv2.imencode(".jpg", cv2.resize(frame, (341, 256)), _flags([]))[1].tobytes()  # as data.convert stores it
    camera = cv2.imencode(".jpg", frame, _flags([]))[1].tobytes()
    expected = {  # (bytes, min_size) -> decoded height, width
        (camera, 224): (240, 320),  # 1/2
        (camera, 128): (240, 320),  # 1/2, not 3/8 (240x180): only power-of-two scales
        (camera, 96): (120, 160),  # 1/4
        (camera, 60): (60, 80),  # 1/8 exactly reaches 60
        (camera, 241): (480, 640),  # 1/2 would give 240 rows: full size
        (record, 224): (256, 341),  # the converter's 341x256 records: 1/2 is too small, not 7/8
        (record, 96): (128, 171),  # 1/2, rounded up as libjpeg does
        (camera, 0): (480, 640),
    }
    for (data, min_size), shape in expected.items():
        assert decode_image(data, min_size=min_size).shape[:2] == shape, (min_size, shape)
    # Reduced scales are libjpeg-turbo's own DCT scaling: OpenCV's reduced decodes give the same pixels.
    for flag, min_size in (
        (cv2.IMREAD_REDUCED_COLOR_2, 224),
        (cv2.IMREAD_REDUCED_COLOR_4, 96),
        (cv2.IMREAD_REDUCED_COLOR_8, 60),
    ):
        np.testing.assert_array_equal(
            decode_image(camera, min_size=min_size), cv2.imdecode(np.frombuffer(camera, np.uint8), flag)
        )


def test_pngs_and_the_jpegs_opencv_decodes_keep_their_full_size():
    frame = cv2.imdecode(np.frombuffer(camera_like_jpeg(seed=1), np.uint8), cv2.IMREAD_COLOR)
    jpeg = cv2.imencode(".jpg", frame, _flags([]))[1].tobytes()
    for data in (cv2.imencode(".png", frame)[1].tobytes(), _exif_rotated(jpeg, 6), _cmyk_jpeg()):
        np.testing.assert_array_equal(
            decode_image(data, min_size=64), cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        )


def test_preprocess_json_without_the_field_means_full_decoding():
    assert Preprocessing().jpeg_dct_scaling and Preprocessing().decode_min_size == 224
    assert Preprocessing.from_dict(Preprocessing(input_size=96).to_dict()) == Preprocessing(input_size=96)
    old = {k: v for k, v in Preprocessing().to_dict().items() if k != "jpeg_dct_scaling"}
    assert Preprocessing.from_dict(old).decode_min_size == 0
    with pytest.raises(ValueError, match="true or false"):
        Preprocessing.from_dict({**old, "jpeg_dct_scaling": "yes"})


def test_a_size_the_data_cannot_hold_is_refused_from_the_header():
    from distracted_driver.data.imaging import jpeg_frame

    data, _ = CORRUPT["frame header claims 6000x6000 over a 640x480 scan"]
    assert len(data) < 50_000 and jpeg_frame(data).blocks() == 750 * 750 + 2 * 375 * 375
    with pytest.raises(ImageError, match="6000x6000 pixels, more than its .* bytes can hold"):
        decode_image(data)
    with pytest.raises(ImageError, match="more than its 2.. bytes can hold"):
        decode_image(png_claiming(6000, 6000))
    flat = cv2.imencode(".jpg", np.full((2000, 2000, 3), 128, np.uint8))[1].tobytes()  # highly compressible
    assert decode_image(flat).shape == (2000, 2000, 3)


# --- every stage refuses them -------------------------------------------------------------


@pytest.mark.parametrize("pass_through", [False, True])
def test_conversion_skips_them(pass_through):
    options = ConvertOptions(pass_through=pass_through)
    assert convert.transform(camera_like_jpeg(), options)
    for data, words in CORRUPT.values():
        with pytest.raises(ImageError, match=words):
            convert.transform(data, options)


def test_the_training_and_evaluation_reader_skips_them():
    records = [Record("good:0", 1, camera_like_jpeg())] + [
        Record(f"bad:{i}", 2, data) for i, (data, _) in enumerate(CORRUPT.values())
    ]
    batches = list(decoded_batches(records, Preprocessing(input_size=32), batch_size=8, workers=2))
    assert [b.sources for b in batches] == [["good:0"]]
    assert sorted(source for source, _ in batches[0].failed) == [f"bad:{i}" for i in range(len(CORRUPT))]


def test_ingest_refuses_them_and_adds_the_rest(tmp_path):
    batch = tmp_path / "batch"
    generate_sample(batch, drivers=1, images_per_class_driver=1, test_images=0, progress=False)
    targets = sorted((batch / "imgs" / "train").glob("c*/*.jpg"))[: len(CORRUPT)]
    for path, (data, _) in zip(targets, CORRUPT.values()):
        path.write_bytes(data)
    settings = Settings(root=tmp_path)
    report = add_data(LocalStorage(settings.bucket_dir), settings, batch, progress=False)
    assert sorted(name for name, _ in report.refused) == sorted(p.name for p in targets)
    assert len(report.added) == 10 - len(CORRUPT)


def test_batch_prediction_lists_them_as_unreadable(make_artifact, tmp_path):
    from distracted_driver.model.artifact import load_artifact
    from distracted_driver.serve.batch_predict import list_images, predict_images

    (tmp_path / "good.jpg").write_bytes(camera_like_jpeg())
    for i, (data, _) in enumerate(CORRUPT.values()):
        (tmp_path / f"bad_{i}.jpg").write_bytes(data)
    artifact = load_artifact(make_artifact("imaging-test-v1", seed=2).directory)
    result = predict_images(artifact, list_images(tmp_path), batch_size=4, workers=2, progress=False)
    assert result.names == ["good.jpg"]
    assert sorted(name for name, _ in result.failed) == [f"bad_{i}.jpg" for i in range(len(CORRUPT))]


@pytest.mark.slow
def test_the_rest_api_answers_400_with_the_reason(api_stack):
    headers = {"x-api-key": api_stack.api_key, "Content-Type": "image/jpeg"}
    assert requests.post(api_stack.predict_url, data=camera_like_jpeg(), headers=headers, timeout=30).status_code == 200
    for name, (data, words) in CORRUPT.items():
        response = requests.post(api_stack.predict_url, data=data, headers=headers, timeout=30)
        assert response.status_code == 400, f"{name}: {response.status_code} {response.text[:200]}"
        assert words in response.json()["message"], name
