"""Damaged JPEGs that still end with the end-of-image marker: what a lenient decoder answers with grey rows."""

from __future__ import annotations

import struct

import cv2
import numpy as np


def camera_like_jpeg(width: int = 640, height: int = 480, seed: int = 0) -> bytes:
    """A frame of smooth shapes and mild noise: about 48 KB at 640x480, like a camera frame."""
    rng = np.random.default_rng(seed)
    frame = cv2.resize(
        rng.integers(0, 255, (height // 16, width // 16, 3), dtype=np.uint8),
        (width, height),
        interpolation=cv2.INTER_CUBIC,
    )
    frame = cv2.add(frame, rng.integers(0, 3, frame.shape, dtype=np.uint8))
    return cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes()


def with_frame_size(jpeg: bytes, width: int, height: int) -> bytes:
    """The same file with its start-of-frame header claiming another size."""
    data = bytearray(jpeg)
    i = 2
    while i < len(data):
        marker, length = data[i + 1], struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            data[i + 5 : i + 9] = struct.pack(">HH", height, width)
            return bytes(data)
        i += 2 + length
    raise AssertionError("no start-of-frame marker")


def scan_offset(jpeg: bytes) -> int:
    """Where the entropy-coded data of the first scan starts (after the start-of-scan header)."""
    start = jpeg.index(b"\xff\xda")
    return start + 2 + struct.unpack(">H", jpeg[start + 2 : start + 4])[0]


def header_scan_end(jpeg: bytes) -> bytes:
    """Headers, the start-of-scan header and the end-of-image marker, with no scan data between."""
    return jpeg[: scan_offset(jpeg)] + b"\xff\xd9"


def corrupt_jpegs() -> dict[str, tuple[bytes, str]]:
    """name → (bytes, words of the refusal); every one ends with FF D9 after its last scan."""
    good = camera_like_jpeg()
    half = good[: scan_offset(good) + (len(good) - scan_offset(good)) // 2]
    return {
        "header, start of scan and end of image, no scan data": (header_scan_end(good), "can hold"),
        "frame header claims 6000x6000 over a 640x480 scan": (with_frame_size(good, 6000, 6000), "can hold"),
        "half the scan data, then the end marker": (half + b"\xff\xd9", "premature end"),
        "garbage before the end marker": (good[:-2] + b"garbage\xff\xd9", "extraneous bytes"),
    }


def png_claiming(width: int, height: int) -> bytes:
    """A small real PNG whose IHDR claims ``width`` x ``height`` RGB pixels (its CRC fixed up)."""
    import zlib

    data = bytearray(cv2.imencode(".png", np.full((64, 64, 3), 90, np.uint8))[1].tobytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)
