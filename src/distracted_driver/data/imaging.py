"""Decoding and preprocessing of images, shared by training and serving.

Training and serving must prepare pixels identically, so every stage that
feeds a model turns bytes into its input with ``model_input`` and the
``Preprocessing`` stored in the model artifact, and every stage decodes with
``decode_image``, which refuses what it cannot decode whole. Only OpenCV,
simplejpeg and numpy here: the serving install has no torch.
"""

from __future__ import annotations

import struct
from dataclasses import asdict, dataclass

import cv2
import numpy as np
import simplejpeg

from distracted_driver.data.payload import JPEG_MAGIC, PNG_MAGIC, image_content_type

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
    # JPEGs decoded at the smallest DCT scale (1/8, 1/4, 1/2) that keeps both edges at least
    # input_size (see jpeg_scale). A preprocess.json without this field predates it: full decode.
    jpeg_dct_scaling: bool = True

    @property
    def decode_min_size(self) -> int:
        """The ``min_size`` this preprocessing decodes with: 0 (full size) or the input size."""
        return self.input_size if self.jpeg_dct_scaling else 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, value: dict) -> Preprocessing:
        known = {k: v for k, v in value.items() if k in cls.__dataclass_fields__}
        known.setdefault("jpeg_dct_scaling", False)  # an artifact from before the field was trained on full decodes
        if not isinstance(known["jpeg_dct_scaling"], bool):
            raise ValueError(f"jpeg_dct_scaling must be true or false, not {known['jpeg_dct_scaling']!r}")
        for key in ("mean", "std"):
            if key in known:
                known[key] = tuple(float(x) for x in known[key])
        params = cls(**known)
        if params.resize != "squash" or params.channel_order != "RGB" or params.layout != "NCHW":
            raise ValueError(f"unsupported preprocessing {value}")
        return params


_JPEG_START_OF_SCAN = b"\xff\xda"
_JPEG_END_OF_IMAGE = b"\xff\xd9"
_PNG_END_CHUNK = b"IEND"
# Start-of-frame markers: every SOFn except DHT (C4), JPG (C8) and DAC (CC). SOF9 and up are arithmetic-coded.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_ARITHMETIC_SOF = 0xC9
_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM and RST0-7 carry no length
# zlib's documented ceiling on deflate's compression ratio.
_DEFLATE_MAX_RATIO = 1032
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by colour type


@dataclass(frozen=True)
class JpegFrame:
    """What a JPEG's headers say, read up to its first scan."""

    width: int
    height: int
    sampling: tuple[tuple[int, int], ...]  # (horizontal, vertical) sampling factor of each component
    arithmetic: bool
    scan_offset: int  # where the first scan's entropy-coded data starts

    def blocks(self) -> int:
        """8x8 blocks the frame holds over all components: each costs a Huffman-coded scan at least one bit."""
        h_max = max(h for h, _ in self.sampling)
        v_max = max(v for _, v in self.sampling)
        total = 0
        for h, v in self.sampling:
            columns = -(-self.width * h // h_max)
            rows = -(-self.height * v // v_max)
            total += -(-columns // 8) * -(-rows // 8)
        return total


def jpeg_frame(data: bytes) -> JpegFrame | None:
    """The frame header of a JPEG and where its first scan starts; None when the headers end first."""
    frame = None
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None  # a segment must start with a marker
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _STANDALONE_MARKERS:
            i += 2
            continue
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        if length < 2 or i + 2 + length > len(data):
            return None
        segment = data[i + 4 : i + 2 + length]
        if marker in _SOF_MARKERS and frame is None and len(segment) >= 6:
            height, width, count = struct.unpack(">HHB", segment[1:6])
            sampling = tuple((b >> 4, b & 0x0F) for b in segment[7 : 6 + 3 * count : 3])
            if len(sampling) != count or count == 0 or not all(h and v for h, v in sampling):
                return None
            frame = (width, height, sampling, marker >= _ARITHMETIC_SOF)
        elif marker == 0xDA:
            return JpegFrame(*frame, i + 2 + length) if frame else None
        elif marker == 0xD9:
            return None
        i += 2 + length
    return None


def _png_size(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, bytes of raw scanlines) from a PNG's IHDR; None if it is not there."""
    if len(data) < 33 or data[12:16] != b"IHDR":
        return None
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    channels = _PNG_CHANNELS.get(colour, 4)
    return width, height, height * (1 + -(-width * channels * depth // 8))


def image_dimensions(data: bytes) -> tuple[int, int] | None:
    """Width and height read from a PNG or JPEG header, without decoding; None if not found."""
    if data.startswith(PNG_MAGIC):
        size = _png_size(data)
        return size[:2] if size else None
    if data.startswith(JPEG_MAGIC):
        frame = jpeg_frame(data)
        return (frame.width, frame.height) if frame else None
    return None


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


def _data_can_hold(data: bytes) -> bool:
    """Whether the file is large enough for the size its header states.

    A Huffman-coded JPEG spends at least one bit on every 8x8 block of every
    component (its DC code), and deflate cannot compress more than 1032:1; a
    header that claims more pixels than that is lying, and decoding it would
    cost the full size in memory and time. Arithmetic-coded JPEGs have no
    such floor; strict decoding still refuses one whose data runs out.
    """
    if data.startswith(PNG_MAGIC):
        size = _png_size(data)
        return size is not None and size[2] <= len(data) * _DEFLATE_MAX_RATIO
    frame = jpeg_frame(data)
    return frame is not None and (frame.arithmetic or (len(data) - frame.scan_offset) * 8 >= frame.blocks())


def check_image_bytes(data: bytes, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """Width and height of a whole JPEG or PNG, checked before any decoding; raises ``ImageError``.

    Only JPEG and PNG whose header states the size get through, so the pixel
    limit (against decompression bombs) and the size the data can hold are
    checked before a row is decoded.
    """
    if not data:
        raise ImageError("empty image")
    if image_content_type(data) is None:
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
    if not _data_can_hold(data):
        raise ImageError(f"image header states {dims[0]}x{dims[1]} pixels, more than its {len(data)} bytes can hold")
    return dims


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS, min_size: int = 0) -> np.ndarray:
    """Decode whole JPEG/PNG bytes to a BGR uint8 array, refusing what is empty, broken, cut or too large.

    The one decoder of every stage (conversion, ingest, training, evaluation,
    batch prediction, the model server). JPEGs are decoded strictly by
    libjpeg-turbo through simplejpeg: what libjpeg only warns about (corrupt
    data, a premature end) is an error here, where OpenCV would return grey
    or garbled rows. Its pixels are OpenCV's (the same library; a test pins
    it). OpenCV gives the pixels of PNGs, and of JPEGs with EXIF (it applies
    the orientation) or in CMYK, once the strict decode has passed them.

    ``min_size > 0`` lets a JPEG decode at a reduced scale (libjpeg-turbo's
    DCT scaling): the smallest of 1/8, 1/4 and 1/2 that keeps both edges at
    least ``min_size`` pixels, else full size, chosen from the stored image's
    own size (``jpeg_scale``). The entropy-coded data is decoded whole at
    every scale, so strictness is the same. PNGs and the JPEGs OpenCV gives
    the pixels of are decoded at full size.
    """
    width, height = check_image_bytes(data, max_pixels)
    if data.startswith(JPEG_MAGIC):
        denominator = jpeg_scale(width, height, min_size)
        image = _decode_jpeg_strictly(data, -(-width // denominator), -(-height // denominator))
        if image is not None:
            return image
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise ImageError("not a decodable JPEG or PNG image")
    return image


def jpeg_scale(width: int, height: int, min_size: int) -> int:
    """The denominator d (8, 4, 2, or 1: full size) a JPEG of this size decodes at, to ceil(width/d) x ceil(height/d).

    The largest d that keeps both edges at least ``min_size``. Only the power-of-two
    scales: libjpeg-turbo's reduced inverse DCTs for 1/2 and 1/4 have SIMD versions and 1/8
    keeps only the DC coefficient, while 3/8 to 7/8 run in plain C (7/8 measured slower than
    a full decode); and 7/8 on the converter's 341x256 records moved the training input
    further from what serving decodes from the camera frame (``benchmarks/decode_scaled.py``).
    640x480 at 224: 2 (320x240); 341x256 at 224: 1 (full size).
    """
    if min_size > 0:
        for denominator in (8, 4, 2):
            if -(-width // denominator) >= min_size and -(-height // denominator) >= min_size:
                return denominator
    return 1


def _decode_jpeg_strictly(data: bytes, width: int, height: int) -> np.ndarray | None:
    """BGR pixels at the scale giving ``width`` x ``height``, or None when the JPEG is sound but OpenCV must give
    the pixels (at full size); raises ImageError."""
    try:
        colorspace = simplejpeg.decode_jpeg_header(data)[2]
        if colorspace in ("CMYK", "YCCK"):
            simplejpeg.decode_jpeg(data, colorspace="CMYK", strict=True)
            return None
        if data.find(b"Exif\x00\x00", 0, 65536) != -1:
            simplejpeg.decode_jpeg(data, colorspace="BGR", strict=True)
            return None
        # simplejpeg decodes at the smallest scale n/8 that reaches both sizes: 1/d for ceil(edge/d).
        return simplejpeg.decode_jpeg(data, colorspace="BGR", strict=True, min_width=width, min_height=height)
    except ValueError as error:
        raise ImageError(f"corrupt JPEG: {error}") from None


def model_input(data: bytes, params: Preprocessing, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Image bytes → the network's input ``[3, S, S]``, as ``params`` (the artifact's preprocess.json) says.

    What every stage that feeds a model does with an image (the training and
    evaluation reader, batch prediction, the model server), so the same bytes
    give the same tensor, bit for bit, in all of them.
    """
    return preprocess(decode_image(data, max_pixels, params.decode_min_size), params)


def preprocess(image_bgr: np.ndarray, params: Preprocessing) -> np.ndarray:
    """BGR uint8 HxWx3 → float32 3xSxS, normalised as the artifact says."""
    size = params.input_size
    resized = cv2.resize(image_bgr, (size, size), interpolation=cv2.INTER_AREA)
    rgb = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB).astype(np.float32)
    rgb *= params.scale
    rgb -= np.asarray(params.mean, dtype=np.float32)
    rgb /= np.asarray(params.std, dtype=np.float32)
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))
