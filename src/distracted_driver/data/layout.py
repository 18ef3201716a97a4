"""The State Farm Distracted Driver layout and its ten classes."""

from __future__ import annotations

CLASSES = tuple(f"c{i}" for i in range(10))

DESCRIPTIONS = {
    "c0": "safe driving",
    "c1": "texting - right",
    "c2": "talking on the phone - right",
    "c3": "texting - left",
    "c4": "talking on the phone - left",
    "c5": "operating the radio",
    "c6": "drinking",
    "c7": "reaching behind",
    "c8": "hair and makeup",
    "c9": "talking to passenger",
}

DRIVER_LIST = "driver_imgs_list.csv"
DRIVER_LIST_HEADER = ("subject", "classname", "img")
SAMPLE_SUBMISSION = "sample_submission.csv"
TRAIN_DIR = "imgs/train"
TEST_DIR = "imgs/test"
IMAGE_SIZE = (640, 480)  # width, height of the camera frames


def class_index(name: str) -> int:
    """``c3`` → 3; raises ValueError for anything that is not one of the ten classes."""
    if name not in CLASSES:
        raise ValueError(f"unknown class {name!r}; expected one of {', '.join(CLASSES)}")
    return CLASSES.index(name)


def labels_document() -> list[dict]:
    """The ``labels.json`` content shipped with every model."""
    return [{"index": i, "class": c, "label": DESCRIPTIONS[c]} for i, c in enumerate(CLASSES)]
