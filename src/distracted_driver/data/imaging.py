"""Decoding and preprocessing of images, shared by training and serving.

Training and serving must prepare pixels identically, so both call
``preprocess`` with the ``Preprocessing`` stored in the model artifact.
Only OpenCV and numpy here: the serving install has no torch.
"""

from __future__ import annotations

import struct
from dataclasses import asdict, dataclass

import cv2
import numpy as np

# Far above a camera frame, far below what would exhaust memory when decoded.
MAX_PIXELS = 40_000_000


class ImageError(ValueError):
    """The bytes are not an image we can use; the message says why."""


@dataclass(frozen=True)
class Preprocessing:
    """How pixels become the network's input; stored as ``preprocess.json`` in the artifact."""

    input_size: int = 224
    resize: str = "squash"  # the whole frame resized to input_size², aspect not kept
    interpolation: str = "area"
    channel_order: str = "RGB"
    layout: str = "NCHW"
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.498, 0.498, 0.498)
    std: tuple[float, float, float] = (0.502, 0.502, 0.502)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, value: dict) -> "Preprocessing":
        known = {k: v for k, v in value.items() if k in cls.__dataclass_fields__}
        for key in ("mean", "std"):
            if key in known:
                known[key] = tuple(float(x) for x in known[key])
        params = cls(**known)
        if params.resize != "squash" or params.channel_order != "RGB" or params.layout != "NCHW":
            raise ValueError(f"unsupported preprocessing {value}")
        return params


def image_dimensions(data: bytes) -> tuple[int, int] | None:
    """Width and height read from a PNG or JPEG header, without decoding; None if not found."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return width, height
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                i += 1
                continue
            marker = data[i + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
                i += 1 if marker == 0xFF else 2
                continue
            length = struct.unpack(">H", data[i + 2 : i + 4])[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                height, width = struct.unpack(">HH", data[i + 5 : i + 9])
                return width, height
            i += 2 + length
    return None


JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_START_OF_SCAN = b"\xff\xda"
_JPEG_END_OF_IMAGE = b"\xff\xd9"
_PNG_END_CHUNK = b"IEND"


def _is_complete(data: bytes) -> bool:
    """Whether the stream reaches its end marker.

    OpenCV decodes a JPEG that lacks its tail with only a warning (grey rows
    where data is missing). Inside entropy-coded data every 0xFF is stuffed, so
    an end-of-image marker after the last start-of-scan means the last scan
    was complete.
    """
    if data.startswith(PNG_MAGIC):
        return data.rfind(_PNG_END_CHUNK) > len(PNG_MAGIC)
    return data.rfind(_JPEG_END_OF_IMAGE) > data.rfind(_JPEG_START_OF_SCAN) > 0


def check_image_bytes(data: bytes, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """Width and height of a whole JPEG or PNG, checked before any decoding; raises ``ImageError``.

    Only JPEG and PNG whose header states the size get through, so the pixel
    limit (against decompression bombs) is applied before a row is decoded.
    """
    if not data:
        raise ImageError("empty image")
    if not (data.startswith(JPEG_MAGIC) or data.startswith(PNG_MAGIC)):
        raise ImageError("not a JPEG or PNG image (unrecognised file signature)")
    dims = image_dimensions(data)
    if dims is None:
        raise ImageError("image header is incomplete: no width and height found")
    if 0 in dims:
        raise ImageError(f"image header states an empty image of {dims[0]}x{dims[1]} pixels")
    if dims[0] * dims[1] > max_pixels:
        raise ImageError(f"image of {dims[0]}x{dims[1]} pixels exceeds the limit of {max_pixels} pixels")
    if not _is_complete(data):
        raise ImageError("image is truncated: its end marker is missing")
    return dims


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode whole JPEG/PNG bytes to a BGR uint8 array, refusing what is empty, broken, cut or too large."""
    check_image_bytes(data, max_pixels)
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise ImageError("not a decodable JPEG or PNG image")
    return image


def preprocess(image_bgr: np.ndarray, params: Preprocessing) -> np.ndarray:
    """BGR uint8 HxWx3 → float32 3xSxS, normalised as the artifact says."""
    size = params.input_size
    resized = cv2.resize(image_bgr, (size, size), interpolation=cv2.INTER_AREA)
    rgb = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB).astype(np.float32)
    rgb *= params.scale
    rgb -= np.asarray(params.mean, dtype=np.float32)
    rgb /= np.asarray(params.std, dtype=np.float32)
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))


def preprocess_batch(images: list[np.ndarray], params: Preprocessing) -> np.ndarray:
    return np.stack([preprocess(image, params) for image in images]) if images else np.zeros(
        (0, 3, params.input_size, params.input_size), np.float32
    )
